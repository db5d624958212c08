"""Crash-safe run directories: a saved config that a restart must match, and append-only JSONL.

Records are appended a batch at a time with one write and an fsync, so a kill loses at most the batch in
flight; a torn last line is cut off on the next start. config.json holds `kind`, `config`, `config_hash`
and `schema_version` (absent: version 0, read as before); a newer rsp's directory is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rsp.renamed import renamed_key

# Version 1 added this key to config.json; the record lines are as in version 0.
SCHEMA_VERSION = 1


class RunDirError(RuntimeError):
    """The output directory cannot be used as asked (unwritable, or holds a different run)."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


CONFIG = "config.json"


@dataclass(frozen=True)
class RunConfig:
    """A run directory's config.json: the kind of run, its settings, the format version it was written in."""

    kind: str
    config: dict
    schema_version: int


def read_run_config(run_dir: Path, *, kind: str | None = None, hint: str = "") -> RunConfig:
    """Read `run_dir/config.json` as a `RunConfig`, raising a `RunDirError` for a missing, unreadable or
    newer-rsp one (and, with `kind`, for a run of another kind); `hint` ends the message of the last two."""
    path = Path(run_dir) / CONFIG
    tail = f"; {hint}" if hint else ""
    what = f"an rsp {kind} run" if kind else "an rsp run directory"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not {what} (no {CONFIG})")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} exists but is unreadable ({exc}){tail}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise RunDirError(f"{path} is not an rsp run config (no 'config' object)")
    version = saved.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RunDirError(f"{path} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        why = f"schema version {version}; this rsp reads up to {SCHEMA_VERSION}"
        raise RunDirError(f"{run_dir} was written by a newer rsp ({why}): upgrade rsp")
    found = saved.get("kind")
    if kind is not None and found != kind:
        raise RunDirError(f"{run_dir} holds a {found!r} run, not {what}{tail}")
    return RunConfig(kind=str(found), config=saved["config"], schema_version=version)


def prepare_run_dir(out: Path, config: dict, *, kind: str) -> bool:
    """Create `out` or check it holds the same run. Returns True when resuming an existing run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"output directory {out} is not writable")
    cfg_path = out / CONFIG
    if cfg_path.is_file():
        old = read_run_config(out, kind=kind, hint="use a new --out directory").config
        renamed = [r for r in (renamed_key(k) for k in sorted(set(old) - set(config))) if r]
        if renamed:
            raise RunDirError(f"{cfg_path}: {'; '.join(renamed)}; rename it in the file to resume this run")
        if old != config:
            keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in keys)
            why = f"{out} already holds a run with different settings ({diffs})"
            raise RunDirError(f"{why}; resume with the same settings or choose a new --out directory")
        return True
    record = dict(kind=kind, config_hash=config_hash(config), config=config, schema_version=SCHEMA_VERSION)
    try:
        atomic_write_text(cfg_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise RunDirError(f"cannot write {cfg_path}: {exc.strerror}") from None
    return False


def read_jsonl_records(path: Path, *, repair: bool = True) -> list[dict]:
    """Complete records; a torn final line (from a kill) is dropped and, with repair, cut off the file."""
    return [record for _, record in read_jsonl_lines(path, repair=repair)]


def read_jsonl_lines(path: Path, *, repair: bool = True) -> list[tuple[int, dict]]:
    """(line number, record) of each complete line, as `read_jsonl_records`; the numbers are for messages."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[tuple[int, dict]] = []
    good_end = 0
    for lineno, line in enumerate(data.split(b"\n")[:-1], 1):  # [:-1]: a torn final line has no newline
        if line.strip():
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError:
                if good_end + len(line) + 1 < len(data):  # a bad line followed by more data is corruption
                    raise RunDirError(f"{path}: corrupt record on line {lineno}") from None
                break
        good_end += len(line) + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


class JsonlAppender:
    """Append records a batch at a time: one write, flush and fsync per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, records: Iterable[dict]) -> None:
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not payload:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                why = f"disk full while writing {self.path}; finished records are kept"
                raise RunDirError(f"{why}, free space and rerun the same command to resume") from None
            raise RunDirError(f"cannot write {self.path}: {exc.strerror}") from None
