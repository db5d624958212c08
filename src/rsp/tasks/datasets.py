"""Benchmark loaders: local JSONL first (works offline), Hugging Face dataset ids as a fallback."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rsp.tasks.base import Problem, Task, TaskError


@dataclass(frozen=True)
class Benchmark:
    name: str
    files: dict[str, str]  # split -> file name in the data directory
    hub_id: str
    question_field: str = "question"
    answer_field: str = "answer"
    hub_config: str | None = None
    hub_split: dict[str, str] = field(default_factory=lambda: {"test": "test"})


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k",
            {"test": "gsm8k_test.jsonl", "train": "gsm8k_train.jsonl"},
            "openai/gsm8k",
            hub_config="main",
            hub_split={"test": "test", "train": "train"},
        ),
        Benchmark(
            "math500",
            {"test": "math500.jsonl", "train": "math_train.jsonl"},
            "HuggingFaceH4/MATH-500",
            "problem",
        ),
        Benchmark(
            "aime24",
            {"test": "aime24.jsonl"},
            "HuggingFaceH4/aime_2024",
            "problem",
            hub_split={"test": "train"},
        ),
        Benchmark("aime25", {"test": "aime25.jsonl"}, "math-ai/aime25", "problem"),
        Benchmark("amc23", {"test": "amc23.jsonl"}, "math-ai/amc23"),
        Benchmark("minerva", {"test": "minerva_math.jsonl"}, "math-ai/minervamath"),
        Benchmark(
            "olympiadbench",
            {"test": "olympiadbench.jsonl"},
            "math-ai/olympiadbench",
            answer_field="final_answer",
        ),
    )
}
ALIASES = {
    "math-500": "math500",
    "minerva_math": "minerva",
    "minerva-math": "minerva",
    "aime-24": "aime24",
    "aime-25": "aime25",
    "amc-23": "amc23",
}


def data_dir_candidates() -> list[Path]:
    out = []
    if os.environ.get("RSP_DATA_DIR"):
        out.append(Path(os.environ["RSP_DATA_DIR"]).expanduser())
    repo_root = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), repo_root):
        out += [base / "data", base.parent / "shared" / "data"]
    return out


def find_data_file(file_name: str, data_dir: str | Path | None = None) -> Path | None:
    dirs = [Path(data_dir)] if data_dir else data_dir_candidates()
    return next((d / file_name for d in dirs if (d / file_name).is_file()), None)


def read_jsonl_problems(path: str | Path, *, name: str | None = None) -> tuple[Problem, ...]:
    """Read problems from JSONL (`problem` or `question`, `answer` with GSM8K's `#### N` reduced to N,
    optional `id`, `solution`, `metadata`), naming file and line on any error."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"dataset file not found: {path}")
    stem = name or path.stem
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise TaskError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            problems.append(
                _record_to_problem(rec, where, default_id=f"{stem}-{lineno - 1}", seen=seen, lineno=lineno)
            )
    if not problems:
        raise TaskError(f"{path}: no problems found (empty file)")
    return tuple(problems)


def _record_to_problem(
    rec: dict,
    where: str,
    *,
    default_id: str,
    seen: dict[str, int],
    lineno: int,
    question_field: str | None = None,
    answer_field: str = "answer",
) -> Problem:
    qf = question_field or ("problem" if "problem" in rec else "question")
    if qf not in rec:
        raise TaskError(f"{where}: missing field 'problem' (or 'question')")
    question = rec[qf]
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: field {qf!r} is empty or not a string")
    if answer_field not in rec:
        raise TaskError(f"{where}: missing field {answer_field!r}")
    answer = rec[answer_field]
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if isinstance(answer, int | float):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise TaskError(f"{where}: field {answer_field!r} is empty or not a string")
    solution = rec.get("solution")
    if "####" in answer:  # GSM8K's raw format: rationale then '#### N'
        solution = solution or answer
        answer = answer.split("####")[-1].strip().replace(",", "")
    pid = str(rec.get("id", rec.get("unique_id", default_id)))
    if pid in seen:
        raise TaskError(f"{where}: duplicate id {pid!r} (first seen on line {seen[pid]})")
    seen[pid] = lineno
    meta = rec.get("metadata")
    return Problem(
        id=pid,
        question=question.strip(),
        answer=answer.strip(),
        solution=solution if isinstance(solution, str) else None,
        metadata=meta if isinstance(meta, dict) else {},
    )


def load_hub_problems(
    hub_id: str, *, config: str | None, split: str, question_field: str, answer_field: str
) -> tuple[Problem, ...]:
    try:
        import datasets
    except ImportError as exc:
        raise TaskError(
            f"loading {hub_id!r} from the Hugging Face Hub needs the 'datasets' package "
            "(pip install 'random-soft-prompts[hub]'), or pass a local JSONL file"
        ) from exc
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, auth, missing config: all end the same way for the user
        raise TaskError(f"could not load Hugging Face dataset {hub_id!r} (split {split!r}): {exc}") from exc
    seen: dict[str, int] = {}
    return tuple(
        _record_to_problem(
            dict(rec),
            f"{hub_id}[{split}][{i}]",
            default_id=f"{hub_id.split('/')[-1]}-{i}",
            seen=seen,
            lineno=i,
            question_field=question_field,
            answer_field=answer_field,
        )
        for i, rec in enumerate(ds)
    )


def load_benchmark(name: str, split: str = "test", *, data_dir: str | Path | None = None) -> Task:
    key = ALIASES.get(name.lower(), name.lower())
    bench = BENCHMARKS[key]
    if split not in bench.files:
        raise TaskError(f"{key} has no {split!r} split here; available: {', '.join(bench.files)}")
    path = find_data_file(bench.files[split], data_dir)
    if path is not None:
        problems = read_jsonl_problems(path, name=key)
        source = str(path)
    elif split not in bench.hub_split:
        raise TaskError(f"{bench.files[split]} not found locally and {key} has no Hub split for {split!r}")
    else:
        problems = load_hub_problems(
            bench.hub_id,
            config=bench.hub_config,
            split=bench.hub_split[split],
            question_field=bench.question_field,
            answer_field=bench.answer_field,
        )
        source = f"hub:{bench.hub_id}"
    fewshot: tuple[Problem, ...] = ()
    if key == "gsm8k" and split == "test":
        train = find_data_file(bench.files["train"], data_dir)
        if train is not None:
            fewshot = read_jsonl_problems(train, name=key)[:2]
    return Task(name=key, problems=problems, description=f"{key} {split} from {source}", fewshot=fewshot)
