"""Choose each model's GSM8K problems from a screening run with its own seed (see experiments.findings.cells).

Why: both packaged models are near the floor on GSM8K, and a problem no attempt ever solves adds a
zero to both arms of every comparison. The screen pools temperature-only and RSP attempts so that the
choice favours neither arm, and it uses a seed the evaluation does not, so the problems are not chosen
on the same random draws that are later measured. The selection is written once: a rerun that would
choose differently (a changed screen) refuses to overwrite it, because finished cells were measured on
the old set. It is also recorded in the committed ledger (`cells.selection_file`: the ids, each screened
problem's correct attempts per arm, the code and the machine), and a later session, whose checkout has
no runs/, rebuilds the data directory from that record instead of screening again. The screen itself
is made in shards; each finished shard's per-problem counts are recorded in the ledger
(`record_screen_shard`), and the selection is made from those records, so a screen may span sessions.
It walks the test file in order and is done once `N_PROBLEMS` problems have qualified, or once it has
screened `SCREEN_MAX_PROBLEMS` (`screen_progress`): later shards could not change the choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.findings.cells import (
    N_PROBLEMS,
    SCREEN_ATTEMPTS,
    SCREEN_MAX_PROBLEMS,
    SCREEN_SEED,
    code_commit,
)
from rsp.records import read_samples
from rsp.runio import atomic_write_text
from rsp.tasks.datasets import BENCHMARKS, find_data_file


class SelectionError(RuntimeError):
    """The screen is unfinished, or an existing selection differs from the one the screen gives."""


def jsonl_ids(path: Path) -> list[str]:
    """The `id` of each record of the JSONL file at `path`, in file order: the order the screen walks
    and the problem set a GSM8K run reads (`experiments.findings.ledger.used_inputs` digests it)."""
    return [
        str(json.loads(raw)["id"]) for raw in path.read_text(encoding="utf-8").splitlines() if raw.strip()
    ]


METHODS = ("temperature", "rsp")
Counts = dict[str, dict[str, list[int]]]  # problem id -> method -> [correct, attempts]


def screen_counts(samples: Sequence[Mapping]) -> Counts:
    """Correct and total screening attempts per problem and arm."""
    counts: Counts = {}
    for r in samples:
        arm = counts.setdefault(str(r["problem_id"]), {}).setdefault(r["method"], [0, 0])
        arm[0] += int(bool(r["correct"]))
        arm[1] += 1
    return counts


def solved_ids(counts: Counts, *, problems: int, attempts: int = SCREEN_ATTEMPTS) -> set[str]:
    """Problem ids with at least one correct attempt, pooled over both arms; at least `problems` of them
    must be complete (a finished shard)."""
    complete = [
        pid for pid, arms in counts.items() if all(arms.get(m, [0, 0])[1] >= attempts for m in METHODS)
    ]
    if len(complete) < problems:
        raise SelectionError(
            f"the screen has {len(complete)} of {problems} problems complete; finish it first"
        )
    return {pid for pid, arms in counts.items() if any(arms.get(m, [0, 0])[0] for m in METHODS)}


@dataclass(frozen=True)
class Progress:
    """How far the screen has walked the test file: the problems it chose so far, how many (a prefix in
    file order) it has screened completely, and whether it is done."""

    chosen: list[str]
    screened: int
    done: bool


def screen_progress(
    records: Path | Counts,
    order: Sequence[str] | None = None,
    *,
    limit: int = N_PROBLEMS,
    cap: int = SCREEN_MAX_PROBLEMS,
    attempts: int = SCREEN_ATTEMPTS,
) -> Progress:
    """Walk the test problems in file order (`order`: their ids; default: the GSM8K test file) over the
    completely screened prefix, choosing those with a correct attempt in either arm. Done once `limit`
    are chosen, or `cap` problems (or the whole file) are screened. Not done without the test file."""
    counts = read_screen_records(records) if isinstance(records, Path) else records
    if order is None:
        test = find_data_file(BENCHMARKS["gsm8k"].files["test"])
        if test is None:
            return Progress([], 0, False)
        order = jsonl_ids(test)
    chosen: list[str] = []
    for screened, pid in enumerate(order[:cap]):
        arms = counts.get(pid)
        if arms is None or not all(arms.get(m, [0, 0])[1] >= attempts for m in METHODS):
            return Progress(chosen, screened, False)  # the screened prefix ends here
        if any(arms.get(m, [0, 0])[0] for m in METHODS):
            chosen.append(pid)
            if len(chosen) == limit:
                return Progress(chosen, screened + 1, True)
    return Progress(chosen, min(cap, len(order)), True)


def record_screen_shard(
    shard: Path, record: Path, problems: int, expected: dict | None = None
) -> Path | None:
    """Write a finished screen shard's counts (with its settings, code and machine) to `record`; None when
    the shard is not finished or already recorded. With `expected` (the config its command line gives), a
    shard directory made under other settings is an error, never recorded."""
    from experiments.findings.frozen import current_spelling
    from experiments.findings.ledger import machine

    if record.is_file() or not (shard / "config.json").is_file():
        return None
    counts = screen_counts(read_samples(shard / "samples.jsonl"))
    try:
        solved_ids(counts, problems=problems)
    except SelectionError:
        return None
    saved = json.loads((shard / "config.json").read_text(encoding="utf-8"))
    if expected is not None and current_spelling(saved.get("config") or {}) != expected:
        raise SelectionError(f"{shard} was made with other settings than its screen command; move it away")
    entry = {
        "config": saved.get("config"),
        "code": code_commit(shard.parent.parent.parent / "code"),  # beside the model folders
        "machine": machine(),
        "correct_per_problem": counts,
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(entry, indent=1) + "\n")
    return record


def read_screen_records(records: Path) -> Counts:
    counts: Counts = {}
    for path in sorted(records.glob("shard-*.json")):
        counts.update(json.loads(path.read_text(encoding="utf-8"))["correct_per_problem"])
    return counts


def select_gsm8k(screen: Path, out: Path, limit: int, record: Path | None = None) -> list[str]:
    """Write out/gsm8k_test.jsonl (first `limit` solved problems, file order) and the two few-shot shots.

    `screen`: the directory of the screen shards' records. With `record`: when it exists, the selection is
    read from it (the screen is not needed); otherwise it is made from the screen and written there."""
    test = find_data_file(BENCHMARKS["gsm8k"].files["test"])
    train = find_data_file(BENCHMARKS["gsm8k"].files["train"])
    if test is None or train is None:
        raise SelectionError("gsm8k_test.jsonl / gsm8k_train.jsonl not found (set RSP_DATA_DIR)")
    counts: Counts | None = None
    if record is not None and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        solved = set(saved["selected"])
        if len(solved) > limit:
            raise SelectionError(f"{record} selects {len(solved)} problems, more than --limit {limit}")
    else:
        counts = read_screen_records(screen)
        progress = screen_progress(counts, jsonl_ids(test), limit=limit)
        if not progress.done:
            raise SelectionError(
                f"the screen has chosen {len(progress.chosen)} of {limit} problems in the first "
                f"{progress.screened} it has screened completely; screen on (up to {SCREEN_MAX_PROBLEMS})"
            )
        solved = set(progress.chosen)
    chosen = [
        raw
        for raw in test.read_text(encoding="utf-8").splitlines()
        if raw.strip() and str(json.loads(raw).get("id")) in solved
    ][:limit]
    if not chosen:
        raise SelectionError(
            f"no screened problem was solved in {screen}; GSM8K cells cannot run for this model"
        )
    if counts is None and len(chosen) != len(solved):
        raise SelectionError(f"{record} names problems that {test} does not hold")
    shots = [raw for raw in train.read_text(encoding="utf-8").splitlines() if raw.strip()][:2]
    files = {"gsm8k_test.jsonl": "\n".join(chosen) + "\n", "gsm8k_train.jsonl": "\n".join(shots) + "\n"}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = out / name
        if path.is_file() and path.read_text(encoding="utf-8") != text:
            raise SelectionError(
                f"{path} holds a different selection; finished GSM8K cells used it. "
                "Move it away (and those cells) to reselect."
            )
        path.write_text(text, encoding="utf-8")
    ids = [str(json.loads(raw)["id"]) for raw in chosen]
    if record is not None and counts is not None:
        entry = {
            "selected": ids,
            "rule": f"the first {limit} test problems (file order) with a correct screening attempt",
            "screen": {
                "seed": SCREEN_SEED,
                "problems": progress.screened,
                "max_problems": SCREEN_MAX_PROBLEMS,
                "attempts_per_arm": SCREEN_ATTEMPTS,
            },
            "correct_per_problem": counts,
        }
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(entry, indent=1) + "\n")
    return ids
