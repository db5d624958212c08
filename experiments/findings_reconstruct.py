"""Rebuild the findings ledger for the runs that finished before the ledger existed (run once, at 647935c).

Why: the first 12 comparisons of the map (24 runs, 5.49 CPU hours) were made in earlier sessions, whose
runs/ directories did not survive into a fresh checkout; what survived is the report they produced,
docs/findings/cells.json at commit 647935c, which holds every complete cell's per-problem correct
counts for both arms and each arm's mean generated tokens, and docs/findings/cost.json, the measured
CPU seconds per attempt. The CPU time of these runs is carried as attempts x that rate (marked
`estimated`): it exceeds the 5.49 CPU hours the earlier timing log summed, so not every earlier step
was logged.
pass@k depends only on the per-problem counts, so it is recovered exactly; the canonical answers
(maj@k) and the per-problem token counts are lost, and the entries say so (`source`).

    python -m experiments.findings_reconstruct    # writes docs/findings/ledger/, docs/findings/timing.jsonl
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from experiments.findings.analyse import cells
from experiments.findings.cells import N_ATTEMPTS, ROOT
from experiments.findings.ledger import LEDGER, TIMING, RunData, entry_path, write_entry
from experiments.findings.runner import expected_config

SOURCE_COMMIT = "647935c"  # the report the counts are read from
CODE_COMMIT = "32d213b1b3702f0f50d9bd06880681f28e206db2"  # the frozen code those runs were made with


def _show(path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{SOURCE_COMMIT}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def main() -> None:
    saved = {c["key"]: c for c in json.loads(_show("docs/findings/cells.json"))}
    by_key = {c.key: c for c in cells()}
    ledger = Path(LEDGER)
    made: dict[str, list[int]] = {}
    attempts: dict[str, int] = {}
    for key, s in saved.items():
        if not s.get("complete"):
            continue
        cell = by_key[key]  # KeyError: the cell list changed since 647935c, and this must not guess
        per = s["correct_per_problem"]
        for arm, run in (("treatment", cell.treatment), ("reference", cell.reference)):
            counts = per[arm]
            if run.out in made:
                assert made[run.out] == counts, f"{run.out}: two cells disagree on its counts"
                continue
            made[run.out] = counts
            pids = per["problem_ids"]
            correct = {pid: [i < c for i in range(N_ATTEMPTS)] for pid, c in zip(pids, counts, strict=True)}
            mean_tokens = float(s["mean_tokens"][arm])
            data = RunData(run, correct, None, {pid: mean_tokens for pid in correct})
            write_entry(
                data,
                ledger,
                config=expected_config(run),
                code=CODE_COMMIT,
                source=(
                    f"reconstructed from docs/findings/cells.json at {SOURCE_COMMIT}: per-problem correct "
                    "counts (attempt order lost), no answers, tokens = the run's mean"
                ),
            )
            attempts[run.model.key] = attempts.get(run.model.key, 0) + len(correct) * run.n
            print(entry_path(run, ledger))
    cost = json.loads(_show("docs/findings/cost.json"))
    total_cpu, total_wall = cost["cpu_hours_used"] * 3600, cost["wall_hours_of_steps"] * 3600
    lines: list[dict] = []
    eval_cpu = 0.0
    for model, rate in cost["cpu_s_per_attempt"].items():
        cpu = rate * attempts[model]
        eval_cpu += cpu
        lines.append(
            {
                "command": f"(carried) the {model} eval steps of the runs reconstructed above",
                "kind": "eval",
                "tier": "carried",
                "out": f"{ROOT}/{model}/arith (carried from {SOURCE_COMMIT})",
                "rc": 0,
                "cpu_s": round(cpu, 1),
                "wall_s": round(total_wall * cpu / total_cpu, 1),
                "new_attempts": attempts[model],
                "threads": "1",
                "estimated": True,
            }
        )
    Path(TIMING).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    print(
        f"{TIMING}: {len(lines)} carried records, {eval_cpu / 3600:.3f} CPU h at the measured rates "
        f"(the earlier sessions logged {total_cpu / 3600:.3f} h: not every earlier step was logged)"
    )


if __name__ == "__main__":
    main()
