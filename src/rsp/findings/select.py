"""Choose each model's GSM8K problems from a screening run with its own seed (see rsp.findings.cells).

Why: both packaged models are near the floor on GSM8K, and a problem no attempt ever solves adds a
zero to both arms of every comparison. The screen pools temperature-only and RSP attempts so that the
choice favours neither arm, and it uses a seed the evaluation does not, so the problems are not chosen
on the same random draws that are later measured. The selection is written once: a rerun that would
choose differently (a changed screen) refuses to overwrite it, because finished cells were measured on
the old set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rsp.findings.cells import SCREEN_ATTEMPTS, SCREEN_PROBLEMS
from rsp.tasks.datasets import BENCHMARKS, find_data_file


class SelectionError(RuntimeError):
    """The screen is unfinished, or an existing selection differs from the one the screen gives."""


def solved_ids(
    samples: list[dict],
    *,
    problems: int = SCREEN_PROBLEMS,
    attempts: int = SCREEN_ATTEMPTS,
    methods: tuple[str, ...] = ("temperature", "rsp"),
) -> set[str]:
    """Problem ids with at least one correct attempt, pooled over `methods`; the screen must be complete."""
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    correct: set[str] = set()
    for r in samples:
        seen[r["problem_id"]].add((r["method"], r["attempt"]))
        if r["correct"]:
            correct.add(r["problem_id"])
    complete = [pid for pid, keys in seen.items() if len(keys) >= attempts * len(methods)]
    if len(complete) < problems:
        raise SelectionError(
            f"the screen has {len(complete)} of {problems} problems complete; finish it first"
        )
    return correct


def select_gsm8k(screen: Path, out: Path, limit: int) -> list[str]:
    """Write out/gsm8k_test.jsonl (first `limit` solved problems, file order) and the two few-shot shots."""
    lines = [
        json.loads(x)
        for x in (screen / "samples.jsonl").read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    solved = solved_ids(lines)
    test = find_data_file(BENCHMARKS["gsm8k"].files["test"])
    train = find_data_file(BENCHMARKS["gsm8k"].files["train"])
    if test is None or train is None:
        raise SelectionError("gsm8k_test.jsonl / gsm8k_train.jsonl not found (set RSP_DATA_DIR)")
    chosen = [
        raw
        for raw in test.read_text(encoding="utf-8").splitlines()
        if raw.strip() and str(json.loads(raw).get("id")) in solved
    ][:limit]
    if not chosen:
        raise SelectionError(
            f"no screened problem was solved in {screen}; GSM8K cells cannot run for this model"
        )
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
    return [str(json.loads(raw)["id"]) for raw in chosen]
