"""Read the map's run directories and turn each cell into paired per-problem numbers.

Why paired per problem: every run of a model and difficulty uses the same seed, hence the same
problems, so a treatment and its reference can be compared problem by problem, which removes the
between-problem variance that dominates 32-problem samples. A cell is a (treatment run, reference
run) pair: every RSP variant and control against temperature-only at the same temperature, plus
direct RSP-versus-control pairs for the claims that compare injections with each other. Runs that
are still in progress contribute the problems that are complete in both arms; a cell counts as
complete (and enters a verdict) only when all `N_PROBLEMS` problems are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiments.findings.cells import (
    BASE_L,
    BASE_T,
    CONTROLS,
    DEFAULT_POSITION,
    N_ATTEMPTS,
    N_PROBLEMS,
    ROOT,
    Run,
    code_commit,
    runs,
)
from experiments.findings.ledger import RunData, read_entry
from rsp.metrics.passk import maj_at_k, pass_at_k
from rsp.metrics.stats import bootstrap_ci, paired_comparison
from rsp.records import SAMPLES, SampleRecord, read_samples
from rsp.runio import CONFIG, SCHEMA_VERSION, read_run_config
from rsp.tasks.grading import canonical_answer

KS = (1, 8, 32)
METRICS = tuple(f"pass@{k}" for k in KS) + ("maj@32",)


def run_dir(run: Run, root: Path | None) -> Path:
    if root is None:
        return Path(run.out)
    return Path(root) / run.out.removeprefix(ROOT + "/")


def load_samples(run: Run, root: Path | None = None) -> RunData | None:
    """The run's complete problems from its run directory, or None when it has not started. Its samples are
    read under the schema version of its config.json (the current one for a directory with samples only), a
    torn last line left alone (the run may be writing)."""
    path = run_dir(run, root)
    version = read_run_config(path).schema_version if (path / CONFIG).is_file() else SCHEMA_VERSION
    records = read_samples(path / SAMPLES, version=version)
    if not records:
        return None
    by_pid: dict[str, dict[int, SampleRecord]] = defaultdict(dict)
    for r in records:
        if r["method"] == run.method:
            by_pid[r["problem_id"]][int(r["attempt"])] = r
    correct: dict[str, list[bool]] = {}
    answers: dict[str, list[str | None]] = {}
    tokens: dict[str, float] = {}
    for pid, attempts in by_pid.items():
        if len(attempts) < run.n:
            continue
        rows = [attempts[a] for a in sorted(attempts)][: run.n]
        if run.deterministic:  # one greedy answer stands for all N identical attempts
            rows = rows[:1] * N_ATTEMPTS
        correct[pid] = [bool(r["correct"]) for r in rows]
        answers[pid] = [canonical_answer(r.get("extracted")) for r in rows]
        tokens[pid] = float(np.mean([r.get("num_tokens", 0) for r in rows]))
    return RunData(run, correct, answers, tokens)


def bank_run(run: Run, root: Path | None, ledger: Path) -> Path | None:
    """Write the ledger entry of a run whose directory holds every attempt under this run's settings
    (None when it does not, or when the entry is already there). The run directory stays the source of
    truth while it exists; the entry is what a later session on a fresh checkout reads."""
    from experiments.findings.frozen import current_spelling, eval_config
    from experiments.findings.ledger import LedgerError, entry_path, expected_inputs, used_inputs, write_entry

    path = run_dir(run, root)
    if entry_path(run, ledger).is_file() or not (path / CONFIG).is_file():
        return None
    config = current_spelling(read_run_config(path).config)
    if config != eval_config(run.argv()[2:]):
        return None
    data = load_samples(run, root)
    if data is None or not data.complete:
        return None
    inputs, expected = used_inputs(run, root), expected_inputs(run, ledger)
    if inputs != expected:
        raise LedgerError(
            f"{path} read other inputs ({inputs}) than the committed records give ({expected}): "
            "retrained soft-prompt vectors or a reselected GSM8K set; not banked"
        )
    code = code_commit((Path(ROOT) if root is None else Path(root)) / "code")
    return write_entry(data, ledger, config=config, code=code, source="runs", inputs=inputs)


def _load_part(run: Run, root: Path | None, ledger: Path | None) -> RunData | None:
    """One directory's worth: the ledger entry when complete, else what the run directory holds."""
    if ledger is not None:
        entry = read_entry(run, ledger)
        if entry is not None and entry.complete:
            return entry
    return load_samples(run, root)


def load_run(run: Run, root: Path | None = None, ledger: Path | None = None) -> RunData | None:
    """The run's complete problems: from its ledger entry when that is complete (a run finished in an
    earlier session, whose run directory is gone), else pooled over what its own directory and its
    shards (ledger entries or directories, finished or in progress) hold."""
    whole = _load_part(run, root, ledger)
    if whole is not None and whole.complete:
        return whole
    parts = [p for p in [whole, *(_load_part(s, root, ledger) for s in run.shards())] if p is not None]
    if not parts:
        return None
    pooled = RunData(run, {}, {}, {})
    for part in parts:
        pooled.correct.update(part.correct)
        pooled.tokens.update(part.tokens)
        if part.answers is None or pooled.answers is None:
            pooled.answers = None
        else:
            pooled.answers.update(part.answers)
    return pooled


@dataclass(frozen=True)
class Cell:
    """A treatment run against a reference run on the same problems."""

    treatment: Run
    reference: Run
    axis: str  # difficulty | temperature | length | position | scale | control | direct

    @property
    def key(self) -> str:
        t, r = self.treatment, self.reference
        return f"{t.model.key}/{t.difficulty.key}/{t.name} vs {r.name}"


def cells() -> list[Cell]:
    """Every comparison the map makes, in the run order of the treatments."""
    out: list[Cell] = []
    all_runs = runs()
    for run in all_runs:
        if run.is_baseline:
            continue
        out.append(Cell(run, run.baseline(), axis_of(run)))
    for run in all_runs:  # direct: RSP (default settings) against each control on the same problems
        if run.method in (*CONTROLS, "soft-prompt"):
            rsp = Run(run.model, run.difficulty, "rsp", run.temperature, dtype=run.dtype)
            out.append(Cell(rsp, run, "direct"))
    return out


def axis_of(run: Run) -> str:
    if run.method != "rsp":
        return "control"
    base = (run.difficulty.key, run.length, run.temperature, run.scale, run.position)
    if run.dtype != "auto" and base == ("arith1", BASE_L, BASE_T, 1.0, DEFAULT_POSITION):
        return "dtype"  # the base pair again, in fp32: the base of the fp32 cells
    if run.position != DEFAULT_POSITION:
        return "position"
    if run.scale != 1.0:
        return "scale"
    if run.length != BASE_L:
        return "length"
    if run.temperature != BASE_T:
        return "temperature"
    return "difficulty"


def per_problem(data: RunData, pids: list[str]) -> dict[str, np.ndarray]:
    vals: dict[str, np.ndarray] = {}
    for k in range(1, N_ATTEMPTS + 1):
        vals[f"pass@{k}"] = np.array([pass_at_k(N_ATTEMPTS, sum(data.correct[p]), k) for p in pids])
    if data.answers is not None:  # unknown for a reconstructed ledger entry: no maj@k
        answers = data.answers
        vals["maj@32"] = np.array([maj_at_k(answers[p], data.correct[p], N_ATTEMPTS) for p in pids])
    return vals


@dataclass
class CellResult:
    cell: Cell
    problems: int
    treatment: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> per-problem values
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)  # arm -> correct attempts per problem
    pids: list[str] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.problems >= N_PROBLEMS

    def has(self, metric: str) -> bool:
        """Whether both arms have the metric (maj@k needs answers, which reconstructed entries lack)."""
        return metric in self.treatment and metric in self.reference

    def delta(self, metric: str, *, confidence: float = 0.95, n_boot: int = 2000) -> dict:
        return paired_comparison(
            self.treatment[metric], self.reference[metric], confidence=confidence, n_boot=n_boot
        ).to_dict()

    def estimate(self, arm: str, metric: str) -> dict:
        values = self.treatment[metric] if arm == "treatment" else self.reference[metric]
        return bootstrap_ci(values).to_dict()

    def curve(self, arm: str) -> list[float]:
        values = self.treatment if arm == "treatment" else self.reference
        return [float(values[f"pass@{k}"].mean()) for k in range(1, N_ATTEMPTS + 1)]

    def summary(self) -> dict:
        """Everything the docs need about the cell, without raw completions."""
        t, r = self.cell.treatment, self.cell.reference
        out: dict = {
            "key": self.cell.key,
            "model": t.model.key,
            "difficulty": t.difficulty.key,
            "axis": self.cell.axis,
            "treatment": t.name,
            "reference": r.name,
            "method": t.method,
            "reference_method": r.method,
            "temperature": t.temperature,
            "L": t.length,
            "scale": t.scale,
            "position": t.position,
            "problems": self.problems,
            "complete": self.complete,
        }
        if not self.problems:
            return out
        for metric in (m for m in METRICS if self.has(m)):
            out[metric] = {
                "treatment": self.estimate("treatment", metric),
                "reference": self.estimate("reference", metric),
                "delta": self.delta(metric),
            }
        out["curves"] = {"treatment": self.curve("treatment"), "reference": self.curve("reference")}
        out["correct_per_problem"] = {"problem_ids": self.pids, **self.counts}
        out["mean_tokens"] = self.tokens
        return out


def evaluate_cell(cell: Cell, loaded: dict[str, RunData | None]) -> CellResult:
    t, r = loaded.get(cell.treatment.out), loaded.get(cell.reference.out)
    if t is None or r is None:
        return CellResult(cell, 0)
    pids = sorted(set(t.correct) & set(r.correct))
    if not pids:
        return CellResult(cell, 0)
    return CellResult(
        cell,
        len(pids),
        per_problem(t, pids),
        per_problem(r, pids),
        {"treatment": [sum(t.correct[p]) for p in pids], "reference": [sum(r.correct[p]) for p in pids]},
        pids,
        {
            "treatment": float(np.mean([t.tokens[p] for p in pids])),
            "reference": float(np.mean([r.tokens[p] for p in pids])),
        },
    )


def evaluate_all(
    root: Path | None = None, cell_list: list[Cell] | None = None, ledger: Path | None = None
) -> list[CellResult]:
    """Every cell's paired numbers; runs are read from `ledger` (committed entries) or from `root`."""
    cell_list = cells() if cell_list is None else cell_list
    loaded: dict[str, RunData | None] = {}
    for cell in cell_list:
        for run in (cell.treatment, cell.reference):
            if run.out not in loaded:
                loaded[run.out] = load_run(run, root, ledger)
    return [evaluate_cell(c, loaded) for c in cell_list]
