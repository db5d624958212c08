"""Rebuild the organism's checkpoints and measurements, one subcommand each (see docs/organism.md).

python experiments/organism/build.py sft            # runs/organism/sft/step_NNNN/ (HF folders)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_sft = sub.add_parser("sft", help="supervised fine-tuning from the packaged SmolLM2-135M-Instruct")
    p_sft.add_argument("--steps", type=int, default=None)
    p_sft.add_argument("--out", type=Path, default=ROOT / "runs/organism/sft")
    args = ap.parse_args(argv)
    if args.cmd == "sft":
        from sft import SFTConfig, run_sft

        cfg = SFTConfig() if args.steps is None else SFTConfig(steps=args.steps)
        run_sft(cfg, args.out)


if __name__ == "__main__":
    main()
