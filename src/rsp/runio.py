"""Crash-safe run directories: a saved config that a restart must match, and append-only JSONL.

Records are appended a batch at a time with one write and an fsync, so a kill loses at most the
batch in flight; a torn last line (killed mid-write) is detected and cut off on the next start.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


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


def prepare_run_dir(out: Path, config: dict, *, kind: str) -> bool:
    """Create `out` or check it holds the same run. Returns True when resuming an existing run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"output directory {out} is not writable")
    cfg_path = out / "config.json"
    record = {"kind": kind, "config_hash": config_hash(config), "config": config}
    if cfg_path.is_file():
        try:
            saved = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(
                f"{cfg_path} exists but is unreadable ({exc}); use a new --out directory"
            ) from None
        if saved.get("kind") != kind:
            raise RunDirError(
                f"{out} holds a {saved.get('kind')!r} run, not {kind!r}; use a new --out directory"
            )
        old = saved.get("config", {})
        if old != config:
            keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in keys)
            raise RunDirError(
                f"{out} already holds a run with different settings ({diffs}); "
                "resume with the same settings or choose a new --out directory"
            )
        return True
    try:
        atomic_write_text(cfg_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise RunDirError(f"cannot write {cfg_path}: {exc.strerror}") from None
    return False


def read_jsonl_records(path: Path, *, repair: bool = True) -> list[dict]:
    """Read complete records; a torn final line (from a kill) is dropped and, with repair, cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: torn final line
        line = data[pos:nl]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if nl + 1 < len(data):  # a bad line followed by more data is corruption, not a torn tail
                    lineno = data.count(b"\n", 0, pos) + 1
                    raise RunDirError(f"{path}: corrupt record on line {lineno}") from None
                break
        pos = nl + 1
        good_end = pos
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
                raise RunDirError(
                    f"disk full while writing {self.path}; finished records are kept, "
                    "free space and rerun the same command to resume"
                ) from None
            raise RunDirError(f"cannot write {self.path}: {exc.strerror}") from None
