"""Offline lm-eval tasks over rsp's own problems, graded by rsp's grader, with pass@k and maj@k over repeats.

Why rsp's loaders and not lm-eval's Hub datasets: the same problems, prompts and answer checking as
`rsp eval`, from local files, so lm-eval's numbers can be set beside rsp's and nothing needs the network.
Each doc carries `rsp_problem_id`, from which `rsp-hf` derives the RSP seeds `rsp eval` would draw.
Settings come from `--metadata` (`arith_steps`, `arith_max_value`, `arith_n`, `arith_seed`, `data_dir`).
Metrics per doc over its repeats (kept together by `keep_all`): `acc`, unbiased `pass@k` and `maj@k`.
"""

from __future__ import annotations

import atexit
import functools
from typing import Any

from rsp.metrics.passk import maj_at_k, pass_at_k
from rsp.tasks.base import Task
from rsp.tasks.datasets import BENCHMARKS, data_dir_candidates, find_data_file
from rsp.tasks.grading import Grader, canonical_answer
from rsp.tasks.prompts import INSTRUCTION
from rsp.tasks.registry import load_task

KS = (1, 2, 4, 8, 16, 32, 64)  # the pass@k / maj@k the task configs declare


def _dataset(task: Task) -> dict[str, Any]:
    import datasets

    rows = [{"rsp_problem_id": p.id, "question": p.question, "answer": p.answer} for p in task.problems]
    return {"test": datasets.Dataset.from_list(rows)}


def load_arith(**metadata: Any) -> dict[str, Any]:
    """rsp's synthetic arithmetic: `arith_n` problems of the test split."""
    task = load_task(
        "arith",
        arith_steps=int(metadata.get("arith_steps", 1)),
        arith_max_value=int(metadata.get("arith_max_value", 10)),
        limit=int(metadata.get("arith_n", 100)),
        seed=int(metadata.get("arith_seed", 0)),
    )
    return _dataset(task)


def load_gsm8k(**metadata: Any) -> dict[str, Any]:
    return _dataset(_local("gsm8k", metadata))


def load_math500(**metadata: Any) -> dict[str, Any]:
    return _dataset(_local("math500", metadata))


def _local(name: str, metadata: dict[str, Any]) -> Task:
    data_dir = metadata.get("data_dir")
    if find_data_file(BENCHMARKS[name].files["test"], data_dir) is None:
        where = [str(data_dir)] if data_dir else [str(d) for d in data_dir_candidates()]
        missing = f"rsp_{name}: {BENCHMARKS[name].files['test']} not found in {', '.join(where)}"
        fix = "set RSP_DATA_DIR (or --metadata data_dir=...), or use lm-eval's hub task when online"
        raise FileNotFoundError(f"{missing}; {fix}")
    return load_task(name, data_dir=data_dir)


def doc_to_text(doc: dict) -> str:
    """The user message of `rsp eval`'s chat prompt (run with `--apply_chat_template` for the same prompt)."""
    return f"{doc['question']}\n{INSTRUCTION}"


def keep_all(resps, docs):
    """Filter that keeps every repeat (lm-eval's default `take_first` would keep only the first)."""
    return resps


@functools.cache
def _grader() -> Grader:
    grader = Grader()
    atexit.register(grader.close)
    return grader


def score(completions: list[str], gold: str) -> dict[str, float]:
    """acc, pass@k and maj@k of one problem's completions (k = powers of two up to their number)."""
    n = len(completions)
    grades = [_grader().grade(c, gold) for c in completions]
    correct = [g.correct for g in grades]
    answers = [canonical_answer(g.extracted) for g in grades]
    out = {"acc": sum(correct) / n}
    for k in KS:
        if k <= n:
            out[f"pass@{k}"] = pass_at_k(n, sum(correct), k)
            out[f"maj@{k}"] = maj_at_k(answers, correct, k)
    return out


def process_results(doc: dict, results: list) -> dict[str, float]:
    """lm-eval hook: `results` is [the repeats' completions] (one generation request per doc)."""
    completions = results[0] if results and isinstance(results[0], list | tuple) else results
    return score([str(c) for c in completions], str(doc["answer"]))
