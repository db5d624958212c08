"""Summary of experiments/dapo_seeds.sh: RSP-DAPO against plain DAPO, per seed and across seeds (issue #16).

Per seed: the two trained policies on the same 32 held-out problems x 32 attempts, paired by problem
(`rsp compare`'s statistics: 95% percentile-bootstrap interval over problems). Across seeds: the mean of
the per-seed differences and a t interval over seeds (3 seeds: 2 degrees of freedom, so the interval is
wide by construction; it is the honest measure of seed-to-seed spread). Seeds whose two evaluations are
not both complete are listed as missing, never filled in.

    python experiments/dapo_seeds_summary.py [--root runs/dapo-seeds] [--out docs/results/dapo-seeds]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsp.metrics import t_interval
from rsp.reporting import compare_runs
from rsp.runio import RunDirError

METRICS = ("accuracy", "pass@8", "pass@32", "maj@32")


def complete(eval_dir: Path, attempts: int = 32 * 32) -> bool:
    path = eval_dir / "samples.jsonl"
    return path.is_file() and sum(1 for _ in path.open("rb")) >= attempts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/dapo-seeds"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/dapo-seeds"))
    args = ap.parse_args()
    per_seed: dict[int, dict] = {}
    missing: list[str] = []
    for seed in (0, 1, 2):
        off, on = args.root / f"L0-s{seed}" / "eval", args.root / f"L4-s{seed}" / "eval"
        if not (complete(off) and complete(on)):
            missing.append(
                f"seed {seed}: {'ok' if complete(off) else 'missing'} (DAPO), "
                f"{'ok' if complete(on) else 'missing'} (RSP-DAPO)"
            )
            continue
        try:
            summary = compare_runs([("dapo", off, "temperature"), ("rsp-dapo", on, "rsp")])
        except (RunDirError, ValueError) as exc:
            missing.append(f"seed {seed}: {exc}")
            continue
        per_seed[seed] = {
            "dapo": {m: summary["methods"]["dapo"][m]["mean"] for m in METRICS},
            "rsp-dapo": {m: summary["methods"]["rsp-dapo"][m]["mean"] for m in METRICS},
            "paired": {m: summary["paired"]["rsp-dapo"][m] for m in METRICS},
        }
    lines = ["# RSP-DAPO vs plain DAPO, 3 seeds per arm (experiments/dapo_seeds.sh)", ""]
    lines += [
        "| seed | metric | DAPO | RSP-DAPO | RSP-DAPO minus DAPO [95% CI over problems] | p |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in per_seed.items():
        for m in METRICS:
            d = r["paired"][m]
            lines.append(
                f"| {seed} | {m} | {r['dapo'][m]:.3f} | {r['rsp-dapo'][m]:.3f} | "
                f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['p_value']:.3f} |"
            )
    across: dict[str, dict] = {}
    if len(per_seed) >= 2:
        lines += [
            "",
            "Across seeds (mean of the per-seed differences, t interval over seeds):",
            "",
            "| metric | mean difference | 95% t interval | seeds |",
            "|---|---|---|---|",
        ]
        for m in METRICS:
            est = t_interval([r["paired"][m]["mean"] for r in per_seed.values()])
            across[m] = {"mean": est.mean, "low": est.low, "high": est.high, "seeds": len(per_seed)}
            lines.append(f"| {m} | {est.mean:+.3f} | [{est.low:+.3f}, {est.high:+.3f}] | {len(per_seed)} |")
    if missing:
        lines += ["", "Missing: " + "; ".join(missing)]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    (args.out / "summary.json").write_text(
        json.dumps({"per_seed": per_seed, "across_seeds": across, "missing": missing}, indent=2) + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
