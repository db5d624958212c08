"""The map's committed ledger: each finished run's graded attempts, small enough to keep in git.

Why: the map takes about 18 CPU hours, several sessions on two cores, and a session's machine keeps
only what is committed; `runs/` (the raw JSONL with every completion, git-ignored) does not survive
from one session to the next. A run that finished in an earlier session must neither be run again nor
drop out of the report, so when a run is complete its graded attempts are written here: per problem,
whether each attempt was correct, its canonical answer (for maj@k) and the mean number of generated
tokens, plus the settings it was made with, the commit of the code that made it and the machine. That
is all the analysis reads (about 10 KB a run, no completion text), and the runner counts a run with a
ledger entry under the same settings as finished.

The settings name some inputs only by path: a soft-prompt run's vectors, a GSM8K run's problem set.
An entry also carries their digests (`inputs`, from the files the run read), and an entry whose digests
differ from what the committed records give (`soft_prompt.json`'s sha256, `selection.json`'s ids) is
refused like one under other settings: retrained vectors or a reselected set make another cell.

An entry's `source` says where it came from. Entries rebuilt from an earlier report's per-problem
correct counts (`reconstructed`) have no answers (so no maj@k) and no per-problem token counts (each
problem carries the run's mean), and the order of their correct attempts is not the order they were
drawn in; pass@k needs only the counts, so it is exact.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from experiments.findings.cells import LEDGER, N_ATTEMPTS, ROOT, SOFT_PROMPT_DIR, TIMING, Run
from experiments.findings.frozen import current_spelling, eval_config
from rsp.runio import atomic_write_text

__all__ = ["LEDGER", "TIMING", "LedgerError", "RunData", "entry_path", "machine", "read_entry", "write_entry"]


class LedgerError(RuntimeError):
    """A ledger entry that cannot stand for its run: other settings, or a malformed file."""


@dataclass
class RunData:
    """Per-problem attempts of one run: correctness and canonical answers (a greedy run expanded to N).

    `answers` is None when they are unknown (a reconstructed entry): maj@k cannot be computed."""

    run: Run
    correct: dict[str, list[bool]]
    answers: dict[str, list[str | None]] | None
    tokens: dict[str, float]

    @property
    def complete(self) -> bool:
        return len(self.correct) >= self.run.problems


def entry_path(run: Run, ledger: Path) -> Path:
    """`<model>/<difficulty>/<run>.json` for a whole run, `<run>/shard-NN.json` beside it for a shard."""
    whole = ledger / run.model.key / run.difficulty.key / f"{run.name}.json"
    return whole if run.offset is None else whole.with_suffix("") / f"{run.shard_name}.json"


def machine() -> str:
    """The CPU model (bf16 sampling differs across CPUs, so a rerun elsewhere draws other attempts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def expected_inputs(run: Run, ledger: Path) -> dict[str, str | None]:
    """What the run reads besides its command line, as the committed records say it must be: a
    soft-prompt run's vectors (the sha256 in `soft_prompt.json`), a GSM8K run's problem set (a digest of
    the ids in `selection.json`); None where that record is missing. The config names only their paths,
    so without these an entry made with retrained vectors or reselected problems would pass as this run."""
    out: dict[str, str | None] = {}
    if run.method == "soft-prompt":
        record = ledger / run.model.key / SOFT_PROMPT_DIR / "soft_prompt.json"
        out["soft_prompt_sha256"] = (
            json.loads(record.read_text(encoding="utf-8"))["sha256"] if record.is_file() else None
        )
    if run.difficulty.key == "gsm8k":
        record = ledger / run.model.key / "gsm8k" / "selection.json"
        selected = json.loads(record.read_text(encoding="utf-8"))["selected"] if record.is_file() else None
        out["gsm8k_selection_sha256"] = None if selected is None else _ids_digest(selected)
    return out


def used_inputs(run: Run, root: Path | None = None) -> dict[str, str | None]:
    """The same digests, of the files the run directory's run actually read under `root` (runs/findings):
    the soft prompt's safetensors, the GSM8K data directory's test problems; None where missing."""
    from experiments.findings.select import jsonl_ids
    from experiments.findings.tensorjson import file_digest

    base = Path(ROOT) if root is None else Path(root)
    out: dict[str, str | None] = {}
    if run.method == "soft-prompt":
        vectors = base / run.model.key / SOFT_PROMPT_DIR / "soft_prompt.safetensors"
        out["soft_prompt_sha256"] = file_digest(vectors) if vectors.is_file() else None
    if run.difficulty.key == "gsm8k":
        data = base / "data" / run.model.key / "gsm8k_test.jsonl"
        out["gsm8k_selection_sha256"] = _ids_digest(jsonl_ids(data)) if data.is_file() else None
    return out


def write_entry(
    data: RunData, ledger: Path, *, config: dict, code: str, source: str, inputs: dict | None = None
) -> Path:
    """Write `data` (a complete run) as its ledger entry, with the digests of the inputs it read
    (`used_inputs`); returns the path."""
    run = data.run
    problems = {}
    for pid in sorted(data.correct):
        flags = data.correct[pid]
        if len(flags) != N_ATTEMPTS:
            raise LedgerError(f"{run.out}: problem {pid} has {len(flags)} attempts, not {N_ATTEMPTS}")
        problems[pid] = {
            "correct": "".join("1" if ok else "0" for ok in flags),
            "answers": None if data.answers is None else data.answers[pid],
            "tokens": round(data.tokens[pid], 3),
        }
    entry = {
        "run": run.out,
        "command": run.shell(),
        "config": config,
        "inputs": inputs or {},
        "code": code,
        "machine": machine() if source == "runs" else None,
        "source": source,
        "attempts": N_ATTEMPTS,
        "problems": problems,
    }
    path = entry_path(run, ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entry, indent=0, ensure_ascii=False) + "\n")
    return path


def read_entry(run: Run, ledger: Path) -> RunData | None:
    """The run's ledger entry, or None when there is none. An entry saved under other settings than the
    run's current command line is an error (delete the entry to run the cell again), never a silent mix."""
    path = entry_path(run, ledger)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        problems = entry["problems"]
        saved = entry["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LedgerError(f"{path}: not a findings ledger entry ({exc})") from exc
    if current_spelling(saved) != eval_config(run.argv()[2:]):
        raise LedgerError(
            f"{path} was made with other settings than `{run.shell()}`; "
            "delete it (and rerun the map) to measure this cell again"
        )
    if entry.get("inputs", {}) != expected_inputs(run, ledger):
        raise LedgerError(
            f"{path} was made with other inputs than the committed records give `{run.shell()}` "
            f"(its {entry.get('inputs', {})} against {expected_inputs(run, ledger)}: retrained soft-prompt "
            "vectors or a reselected GSM8K set); delete it to measure this cell again"
        )
    bad = [pid for pid, p in problems.items() if len(p["correct"]) != entry.get("attempts", N_ATTEMPTS)]
    if bad:
        raise LedgerError(f"{path}: problems {bad[:3]} do not have {entry.get('attempts')} attempts; damaged")
    correct = {pid: [c == "1" for c in p["correct"]] for pid, p in problems.items()}
    known = all(p.get("answers") is not None for p in problems.values())
    answers = {pid: list(p["answers"]) for pid, p in problems.items()} if known else None
    tokens = {pid: float(p["tokens"]) for pid, p in problems.items()}
    return RunData(run, correct, answers, tokens)
