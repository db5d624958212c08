"""One entry point that turns a task spec from the CLI or API into a Task."""

from __future__ import annotations

from pathlib import Path

from rsp.tasks.base import Task, TaskError
from rsp.tasks.datasets import ALIASES, BENCHMARKS, load_benchmark, load_hub_problems, read_jsonl_problems
from rsp.tasks.synthetic import arith_task

TASK_NAMES = ("arith", *BENCHMARKS)


def load_task(
    spec: str = "arith",
    *,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    arith_steps: int = 2,
    arith_max_value: int = 20,
    arith_n: int = 100,
    seed: int = 0,
) -> Task:
    """Resolve `spec`: 'arith', a benchmark name, a .jsonl path (or 'jsonl:PATH'), or
    'hf:org/name[:config]'. `limit` keeps the first problems (`arith` generates `limit`, else `arith_n`)."""
    if limit is not None and limit < 1:
        raise TaskError(f"limit must be >= 1, got {limit}")
    if spec == "arith":
        n = arith_n if limit is None else limit
        return arith_task(split=split, n=n, steps=arith_steps, max_value=arith_max_value, seed=seed)
    if spec.lower() in BENCHMARKS or spec.lower() in ALIASES:
        task = load_benchmark(spec, split, data_dir=data_dir)
    elif spec.startswith("jsonl:") or spec.endswith(".jsonl"):
        path = Path(spec.removeprefix("jsonl:"))
        task = Task(name=path.stem, problems=read_jsonl_problems(path), description=f"JSONL file {path}")
    elif spec.startswith("hf:"):
        hub_id, _, config = spec[3:].partition(":")
        problems = load_hub_problems(
            hub_id, config=config or None, split=split, question_field="problem", answer_field="answer"
        )
        task = Task(name=hub_id.split("/")[-1], problems=problems, description=f"hub:{hub_id} {split}")
    else:
        raise TaskError(
            f"unknown task {spec!r}; choose one of {', '.join(TASK_NAMES)}, a .jsonl path, or hf:org/name"
        )
    if limit is None:
        return task
    problems = task.problems[:limit]
    return Task(task.name, problems, f"{task.description} (first {len(problems)})", task.fewshot)
