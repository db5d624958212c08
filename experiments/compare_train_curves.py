"""Overlay the training curves of several `rsp train` runs.

python experiments/compare_train_curves.py OUT.png LABEL=RUN ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = ("reward_mean", "accuracy", "frac_groups_kept", "entropy", "response_length", "step_time")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, arms = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for label, run in arms:
        records = [
            json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line
        ]
        steps = [r["step"] for r in records]
        for ax, key in zip(axes.flat, KEYS, strict=True):
            ax.plot(steps, [r.get(key, float("nan")) for r in records], marker="o", ms=3, label=label)
    for ax, key in zip(axes.flat, KEYS, strict=True):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
