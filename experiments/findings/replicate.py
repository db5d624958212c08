"""Rerun one banked run of the map on this machine and compare it, attempt by attempt, with its ledger entry.

Why: the map is made over several sessions on whatever CPU each session draws, and a reader should
know what a rerun elsewhere gives. Sampling draws the same random numbers everywhere (the seeds are
fixed per batch and attempt), but the logits that the draws are compared against come from CPU
kernels that differ between instruction sets, so a token near a tie can flip and the trajectory
diverges from there. This measures how often that happens for one run: how many attempts give the
same answer and the same grade, and how far each problem's correct count and the run's pass@k move.
It reruns with the map's frozen code (the entry's commit), so the only thing that differs is the
machine.

    python -m experiments.findings replicate --run smollm2/arith1/temperature_T0.7_fp32/shard-00

writes the rerun under runs/findings/replicate/ (resumable, like every `rsp eval`) and the comparison
to docs/findings/replication/<model>/<difficulty>/<run>[/<shard>].json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.findings.analyse import KS, load_samples, per_problem, run_dir
from experiments.findings.cells import LEDGER, ROOT, Run, code_commit, runs
from experiments.findings.ledger import RunData, entry_path, machine, read_entry
from experiments.findings.runner import frozen_env
from rsp.runio import atomic_write_text

REPLICATE_ROOT = f"{ROOT}/replicate"
REPLICATION_DOCS = "docs/findings/replication"


class ReplicationError(RuntimeError):
    """The run cannot be replicated as asked: unknown key, no ledger entry, or other code."""


@dataclass
class Agreement:
    """A rerun against the banked run, over the problems both have."""

    problems: int
    attempts: int  # compared attempts, all problems together
    same_answer: int  # attempts whose canonical answer is the same in both
    same_grade: int  # attempts graded the same (correct in both, or wrong in both)
    problems_same_count: int  # problems with the same number of correct attempts
    max_count_change: int  # the largest change of a problem's correct count
    problems_same_tokens: int  # problems whose mean generated length agrees to 0.001 token (trajectories)
    banked: dict[str, float]  # pass@k of the banked run, mean over problems
    rerun: dict[str, float]


def compare(banked: RunData, rerun: RunData) -> Agreement:
    """Attempt-by-attempt agreement of two runs of the same settings (attempt i of a problem in one
    against attempt i in the other: the same seed, so the same draws). Both need their answers."""
    pids = sorted(set(banked.correct) & set(rerun.correct))
    if not pids:
        raise ReplicationError("the two runs have no complete problem in common")
    if banked.answers is None or rerun.answers is None:
        raise ReplicationError("a run without its answers cannot be compared attempt by attempt")
    attempts = same_answer = same_grade = same_count = same_tokens = 0
    max_change = 0
    for pid in pids:
        a, b = banked.correct[pid], rerun.correct[pid]
        if len(a) != len(b):
            raise ReplicationError(f"{pid}: {len(a)} banked attempts against {len(b)} rerun")
        attempts += len(a)
        same_grade += sum(x == y for x, y in zip(a, b, strict=True))
        same_answer += sum(x == y for x, y in zip(banked.answers[pid], rerun.answers[pid], strict=True))
        same_tokens += abs(banked.tokens[pid] - rerun.tokens[pid]) < 1e-3
        change = abs(sum(a) - sum(b))
        same_count += change == 0
        max_change = max(max_change, change)

    def passk(data: RunData) -> dict[str, float]:
        vals = per_problem(data, pids)
        return {f"pass@{k}": round(float(vals[f"pass@{k}"].mean()), 6) for k in KS}

    return Agreement(
        problems=len(pids),
        attempts=attempts,
        same_answer=same_answer,
        same_grade=same_grade,
        problems_same_count=same_count,
        max_count_change=max_change,
        problems_same_tokens=same_tokens,
        banked=passk(banked),
        rerun=passk(rerun),
    )


def find_run(key: str) -> Run:
    """The map's run (or shard) whose directory under runs/findings is `key`."""
    key = key.strip("/").removeprefix(ROOT + "/")
    known = {r.out.removeprefix(ROOT + "/"): r for whole in runs() for r in [whole, *whole.shards()]}
    if key not in known:
        parts = key.split("/")
        near = sorted(k for k in known if k.split("/")[:3] == parts[:3]) or sorted(
            k for k in known if k.split("/")[:2] == parts[:2] and "shard" not in k
        )
        hint = f"; runs by that name or of that model and difficulty: {', '.join(near[:8])}" if near else ""
        raise ReplicationError(f"no run of the map is called {key!r}{hint}")
    return known[key]


def replicate(
    key: str,
    *,
    root: Path = Path(REPLICATE_ROOT),
    ledger: Path = Path(LEDGER),
    docs: Path = Path(REPLICATION_DOCS),
    code_src: Path | None = None,
) -> tuple[Path, Agreement]:
    """Rerun `key` here with the frozen code (`code_src`, which must hold the entry's commit), compare it
    with its ledger entry, write the comparison; returns its path and the agreement."""
    run = find_run(key)
    path = entry_path(run, ledger)
    banked = read_entry(run, ledger)
    if banked is None:
        raise ReplicationError(f"{key} has no ledger entry ({path}); nothing to compare with")
    entry = json.loads(path.read_text(encoding="utf-8"))
    if entry.get("source") != "runs":
        raise ReplicationError(
            f"{key}'s entry was {entry.get('source')} from an earlier report's per-problem counts: its "
            "attempts are not in the order they were drawn, so they cannot be compared one by one"
        )
    src = code_src or Path(os.environ.get("FINDINGS_CODE_SRC", f"{ROOT}/code/src"))
    commit = code_commit(src.parent)
    if commit != entry["code"]:
        raise ReplicationError(
            f"{key} was made with code {entry['code']}, but {src} holds {commit} code: "
            "a rerun with other code would not measure the machine alone (experiments/findings.sh extracts "
            "the map's frozen code into runs/findings/code)"
        )
    argv = run.argv()
    beside = Path(sys.executable).parent / "rsp"  # the rsp of this environment, run on the frozen code
    argv[0] = str(beside) if beside.is_file() else (shutil.which("rsp") or "rsp")
    argv[-1] = str(run_dir(run, root))  # --out
    subprocess.run(argv, env=frozen_env(str(src), run.env()), check=True)
    rerun = load_samples(run, root)
    if rerun is None or not rerun.complete:
        raise ReplicationError(f"the rerun under {root} is incomplete; run the command again to resume it")
    agreement = compare(banked, rerun)
    out = docs / path.relative_to(ledger)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "run": key,
        "command": run.shell(),
        "code": entry["code"],
        "banked_machine": entry.get("machine"),
        "rerun_machine": machine(),
        **asdict(agreement),
    }
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    return out, agreement
