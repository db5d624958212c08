"""`rsp train`: RSP-DAPO from flags and/or a config file (YAML or JSON, or a run directory's config.json;
flags override the file). The flags are the fields of `DAPOConfig` plus `OutputOptions` and
`TrainOptions`, parsed by `rsp.config.RSPArgumentParser`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from rsp.config import OutputOptions, RSPArgumentParser, option
from rsp.train.config import DAPOConfig
from rsp.train.run import train


@dataclasses.dataclass
class TrainOptions:
    """What `rsp train` writes besides the run itself; not part of the run's settings (not saved)."""

    save_merged: bool = option(
        False, "at the end also write OUT/merged/, a model directory for `rsp eval --model OUT/merged`"
    )


def build_parser() -> RSPArgumentParser:
    return RSPArgumentParser(
        [DAPOConfig, OutputOptions, TrainOptions],
        prog="rsp train",
        description="Train with DAPO; every rollout carries its own Random Soft Prompt "
        "(--rsp-length 0 = plain DAPO). Resumes if --out holds the same run "
        "(--config OUT/config.json repeats its settings). "
        "See docs/training.md.",
    )


def parse(argv: Sequence[str]) -> tuple[DAPOConfig, OutputOptions, TrainOptions]:
    cfg, output, options = build_parser().parse(argv)
    return cfg.validate(), output, options


def main(argv: Sequence[str]) -> int:
    cfg, output, options = parse(argv)
    out = Path(output.out)
    records = train(cfg, out, progress=not output.quiet, save_merged=options.save_merged)
    if records:
        last = records[-1]
        print(
            f"step {last['step']}: reward {last.get('reward_mean', float('nan')):.3f}, "
            f"accuracy {last.get('accuracy', float('nan')):.3f}; "
            f"metrics in {out / 'metrics.jsonl'}, curves in {out / 'curves.png'}"
        )
    return 0
