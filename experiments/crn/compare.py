"""Paired interval widths, RSP minus temperature per problem, without CRN (the committed ledger pair of the
findings map, independent decode streams) and with CRN (experiments/crn/run.sh), on the problems both hold.

    python experiments/crn/compare.py [RUN_DIR ...]   # default runs/crn/smollm2-arith1-crn (and its shard-*)

A problem counts once both arms have all 32 attempts in both runs, so a partial CRN run compares on fewer
problems (say so when quoting it).
"""

from __future__ import annotations

import glob
import json
import sys

import numpy as np

from rsp.metrics.passk import pass_at_k
from rsp.metrics.stats import paired_comparison

LEDGER = "docs/findings/ledger/smollm2/arith1"
N = 32


def ledger(arm: str) -> dict[str, list[bool]]:
    out = {}
    for f in sorted(glob.glob(f"{LEDGER}/{arm}/shard-*.json")):
        with open(f) as fh:
            for pid, rec in json.load(fh)["problems"].items():
                out[pid] = [c == "1" for c in rec["correct"]]
    return out


def crn(dirs: list[str]) -> dict[str, dict[str, list[bool]]]:
    got: dict[str, dict[str, dict[int, bool]]] = {"temperature": {}, "rsp": {}}
    for d in dirs:
        for f in [*glob.glob(f"{d}/samples.jsonl"), *sorted(glob.glob(f"{d}/shard-*/samples.jsonl"))]:
            with open(f) as fh:
                for line in fh:
                    if line.endswith("\n"):
                        r = json.loads(line)
                        got[r["method"]].setdefault(r["problem_id"], {})[r["attempt"]] = bool(r["correct"])
    return {m: {p: [v[a] for a in sorted(v)] for p, v in d.items() if len(v) == N} for m, d in got.items()}


def main() -> None:
    dirs = sys.argv[1:] or ["runs/crn/smollm2-arith1-crn"]
    old_t, old_r = ledger("temperature_T0.7_fp32"), ledger("rsp_T0.7_L4_a1_agp_fp32")
    new = crn(dirs)
    pids = sorted(set(new["temperature"]) & set(new["rsp"]) & set(old_t) & set(old_r))
    print(f"problems with both arms complete in both runs: {len(pids)} of {len(old_t)}\n")
    print("| pass@k | streams | mean difference | 95% CI | width | sd of per-problem differences |")
    print("|---|---|---|---|---|---|")
    for k in (1, 4, 8, 32):
        for name, t, r in (("independent", old_t, old_r), ("CRN", new["temperature"], new["rsp"])):
            a = np.array([pass_at_k(N, sum(r[p]), k) for p in pids])
            b = np.array([pass_at_k(N, sum(t[p]), k) for p in pids])
            c = paired_comparison(a, b).to_dict()
            print(
                f"| {k} | {name} | {c['mean']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | "
                f"{c['ci_high'] - c['ci_low']:.3f} | {np.std(a - b, ddof=1):.3f} |"
            )


if __name__ == "__main__":
    main()
