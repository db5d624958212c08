"""The JSONL records of a run, typed, and the one place they are written and read.

A **sample** is one attempt of `rsp eval` (a line of `samples.jsonl`), a **rollout** one attempt in
`rsp train` (`rollouts.jsonl`). Both are `TypedDict`s, not dataclasses: a record is a JSON object on disk
and a plain dict in every reader (indexed by key, copied with `{**r, "method": label}`), and a TypedDict
lets mypy check its fields while it round-trips through `json` unchanged.

Writers refuse a record with a missing or undeclared field; readers name the file, line and missing field
of a malformed line. Format versions 0 and 1 (`rsp.runio.SCHEMA_VERSION`) have the same lines.
"""

# No `from __future__ import annotations` here: TypedDict must see `NotRequired` as an object, not a string,
# to list token_ids_source among the optional keys.
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NotRequired, TypedDict, cast

from rsp.runio import (
    SCHEMA_VERSION,
    JsonlAppender,
    RunConfig,
    RunDirError,
    atomic_write_text,
    read_jsonl_lines,
    read_run_config,
)

SAMPLES = "samples.jsonl"
ROLLOUTS = "rollouts.jsonl"


class SampleRecord(TypedDict):
    """One attempt of `rsp eval`: which problem, method and attempt; its seeds; the completion; its grade."""

    problem_id: str
    method: str
    attempt: int  # index among the problem's n attempts under this method
    rsp_seed: int | None  # `injection.rows([rsp_seed])` rebuilds its vectors; None: nothing injected
    decode_seed: int | None  # the batch's sampling seed; None in records converted from lm-eval
    prompt_hash: str | None
    completion: str
    token_ids: list[int]
    num_tokens: int
    finish_reason: str | None  # None in records converted from lm-eval
    extracted: str | None  # the answer the grader found, None when it found none
    gold: str
    correct: bool
    grade_method: str
    token_ids_source: NotRequired[str]  # "retokenised": token_ids recomputed from lm-eval's text


class RolloutRecord(TypedDict):
    """One attempt in `rsp train` (native trainer): step, seed, completion, reward, whether it was kept."""

    step: int
    problem_id: str
    rsp_seed: int | None
    completion: str
    token_ids: list[int]
    finish_reason: str
    correct: bool
    reward: float
    advantage: float
    kept: bool  # its group had mixed correctness, so it entered the update (DAPO's dynamic sampling)


class RecordError(RunDirError):
    """A record line that is not the declared schema; the message names the file, line and field."""


def _fields(schema: type) -> tuple[frozenset[str], frozenset[str]]:
    return schema.__required_keys__, schema.__optional_keys__  # type: ignore[attr-defined]


def _read(path: Path, schema: type, *, repair: bool, version: int) -> list[dict]:
    if version > SCHEMA_VERSION:
        why = f"schema version {version}; this rsp reads up to {SCHEMA_VERSION}"
        raise RecordError(f"{path} was written by a newer rsp ({why}): upgrade rsp")
    required, _ = _fields(schema)
    name = schema.__name__.removesuffix("Record").lower()
    out = []
    for lineno, obj in read_jsonl_lines(path, repair=repair):
        if not isinstance(obj, dict):
            raise RecordError(f"{path}, line {lineno}: a {name} record must be a JSON object")
        missing = sorted(required - obj.keys())
        if missing:
            fields = ", ".join(map(repr, missing))
            raise RecordError(f"{path}, line {lineno}: {name} record lacks field(s) {fields}")
        out.append(obj)
    return out


def _checked(records: Iterable[Mapping], schema: type) -> list[dict]:
    """`records` as plain dicts, refusing one with a missing or undeclared field (a bug in the writer)."""
    required, optional = _fields(schema)
    out = [dict(r) for r in records]
    for r in out:
        missing, unknown = required - r.keys(), r.keys() - required - optional
        if missing or unknown:
            why = f"missing {sorted(missing)}, undeclared {sorted(unknown)}"
            raise ValueError(f"not a {schema.__name__}: {why}")
    return out


def read_samples(path: Path, *, repair: bool = False, version: int = SCHEMA_VERSION) -> list[SampleRecord]:
    """The samples of `path` (none if it does not exist). `repair` cuts a torn last line off the file (a
    resuming writer); `version` is the run's `schema_version` (`read_eval_run` passes it)."""
    return cast(list[SampleRecord], _read(path, SampleRecord, repair=repair, version=version))


def read_rollouts(path: Path, *, repair: bool = False, version: int = SCHEMA_VERSION) -> list[RolloutRecord]:
    """The rollouts of `path`, as `read_samples`."""
    return cast(list[RolloutRecord], _read(path, RolloutRecord, repair=repair, version=version))


def append_samples(path: Path, records: Iterable[SampleRecord]) -> None:
    """Append a batch of samples with one write and fsync (`rsp.runio.JsonlAppender`)."""
    JsonlAppender(path).append(_checked(records, SampleRecord))


def append_rollouts(path: Path, records: Iterable[RolloutRecord]) -> None:
    """Append a step's rollouts with one write and fsync."""
    JsonlAppender(path).append(_checked(records, RolloutRecord))


def write_rollouts(path: Path, records: Iterable[RolloutRecord]) -> None:
    """Replace `path` with `records` atomically (a resumed run drops the steps after its checkpoint)."""
    lines = _checked(records, RolloutRecord)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))


def read_eval_run(run_dir: Path) -> tuple[RunConfig, list[SampleRecord]]:
    """An `rsp eval` run's config.json and samples, read under its schema version (never repaired);
    a `RunDirError` when `run_dir` is not one, is from a newer rsp, or holds a malformed line."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir, kind="eval")
    return saved, read_samples(run_dir / SAMPLES, version=saved.schema_version)
