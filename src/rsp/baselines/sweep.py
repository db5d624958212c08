"""`rsp sweep`: a grid over method x L x scale x temperature, each cell an `rsp eval` run on one problem set.

Each cell is a complete eval run directory (OUT/cells/<name>/), so cells resume exactly like `rsp eval`
and a finished cell is skipped without loading the model. All cells share the seed, hence the problems
and the RSP seed stream. Axes a method does not read (the method registry says which) collapse, and a
deterministic cell (greedy decoding with an injection that is the same for every attempt) runs once per
problem and counts for all N attempts.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rsp.config import config_dict, field_label, option
from rsp.evaluation import ConfigError, EvalConfig, run_eval
from rsp.generation import Generator
from rsp.methods import BASELINE, RSPConfig, get_method, method_names
from rsp.models.loading import ModelBase
from rsp.records import SampleRecord, read_eval_run
from rsp.renamed import renamed_method
from rsp.reporting import Record, ci_text, pyplot, summarise, write_eval_report
from rsp.runio import RunDirError, atomic_write_text, prepare_run_dir

DEFAULT_METHODS = ("temperature", "rsp")
DEFAULT_LENGTHS = (1, 2, 4, 8, 16, 32)
DEFAULT_SCALES = (1.0,)
DEFAULT_TEMPERATURES = (0.0, 0.3, 0.7, 1.0)
# The base run's settings that a sweep's grid sets per cell (not part of what a resumed sweep must share).
GRID_KEYS = ("methods", "rsp_length", "rsp_scale", "temperature", "method_options")
# EvalConfig fields the grid replaces: not settings of `rsp sweep` (its plural grid flags set them per cell).
NOT_SWEPT_FLAGS = ("rsp_length", "rsp_scale", "temperature")
CSV_COLUMNS = ("cell", "method", "L", "rsp_scale", "temperature", "attempts_run", "problems")


@dataclass(frozen=True)
class Cell:
    method: str
    temperature: float
    length: int | None = None  # None: the method has no L axis
    rsp_scale: float | None = None  # None: the method has no scale axis
    replicate: bool = False  # deterministic: run one attempt per problem, count it N times

    @property
    def name(self) -> str:
        length = "" if self.length is None else f"_L{self.length}"
        scale = "" if self.rsp_scale is None else f"_a{self.rsp_scale:g}"  # "a": as in sweeps written so far
        return f"{self.method}_T{self.temperature:g}{length}{scale}"

    def eval_config(self, base: EvalConfig, n: int, method_options: dict) -> EvalConfig:
        """The `rsp eval` settings of this cell: the base run with the cell's method, L, scale, temperature,
        and only the method options its method reads (so adding e.g. a soft-prompt path to a sweep does not
        change, and invalidate, the other cells)."""
        return replace(
            base,
            methods=(self.method,),
            n=1 if self.replicate else n,
            temperature=self.temperature,
            rsp_length=self.length if self.length is not None else 0,
            rsp_scale=self.rsp_scale if self.rsp_scale is not None else 1.0,
            method_options=get_method(self.method).cell_options(method_options),
        )


@dataclass
class SweepGrid:
    """The grid of `rsp sweep` (with `rsp eval`'s `--methods` as its method axis): each field is a flag."""

    _argument_group_name = "grid"  # the --help group of every field
    rsp_lengths: tuple[int, ...] = option(
        default_factory=lambda: DEFAULT_LENGTHS, help="L values, for the methods that read L"
    )
    rsp_scales: tuple[float, ...] = option(
        default_factory=lambda: DEFAULT_SCALES,
        help="multipliers on the fitted standard deviation, for the methods that read the scale",
    )
    temperatures: tuple[float, ...] = option(default_factory=lambda: DEFAULT_TEMPERATURES, help="0 = greedy")


@dataclass
class SweepConfig:
    """A grid on top of one base evaluation (model, task, problems, n, seed, decoding limits)."""

    base: EvalConfig = field(default_factory=EvalConfig)
    methods: tuple[str, ...] = DEFAULT_METHODS
    rsp_lengths: tuple[int, ...] = DEFAULT_LENGTHS
    rsp_scales: tuple[float, ...] = DEFAULT_SCALES
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    @classmethod
    def from_configs(cls, base: EvalConfig, grid: SweepGrid) -> SweepConfig:
        """From what `rsp sweep` parses: the base run (its `methods` are the method axis) and the grid."""
        cell_base = replace(base, methods=(BASELINE,), rsp_length=0, rsp_scale=1.0, temperature=0.0)
        return cls(cell_base, base.methods, grid.rsp_lengths, grid.rsp_scales, grid.temperatures)

    def validate(self) -> None:
        axes: list[tuple[str, tuple, int | None, str]] = [  # each grid axis, its least value, a note on it
            ("methods", self.methods, None, ""),
            ("rsp_lengths", self.rsp_lengths, 1, " (temperature-only is the L=0 baseline)"),
            ("rsp_scales", self.rsp_scales, 0, ""),
            ("temperatures", self.temperatures, 0, " (0 = greedy)"),
        ]
        for axis, values, minimum, note in axes:
            if not values:
                raise ConfigError(f"{field_label(axis)} must list at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"{field_label(axis)} lists a value twice: {', '.join(map(str, values))}")
            if minimum is not None and any(v < minimum for v in values):
                raise ConfigError(f"{field_label(axis)} must all be >= {minimum}{note}, got {values}")
        known = method_names()
        for m in self.methods:
            if m not in known:
                unknown = renamed_method(m) or f"unknown method {m!r}; known methods: {', '.join(known)}"
                raise ConfigError(unknown)
            for missing in get_method(m).missing_options(self.base.method_options):
                raise ConfigError(f"method {m} needs --method-option {missing.key}={missing.metavar}")
        first = replace(self.base, methods=(BASELINE,), temperature=self.temperatures[0], method_options={})
        first.validate()

    def identity(self) -> dict:
        """What a resumed sweep must share with the original; the grid itself may grow."""
        return {k: v for k, v in self.base.to_dict().items() if k not in GRID_KEYS}

    def cells(self) -> list[Cell]:
        """Cells in run order: per temperature the baseline first, then each method's L x scale grid; the axes
        a method does not read (`Method.uses_length`, `uses_scale`) collapse to one cell."""
        methods = [BASELINE] + [m for m in self.methods if m != BASELINE]
        specs = {m: get_method(m) for m in methods}
        own_length = {  # the L of a method that does not read L (a soft prompt's file), read once
            m: spec.injected_length(RSPConfig(method=m, method_options=self.base.method_options))
            for m, spec in specs.items()
            if not spec.uses_length
        }
        cells: list[Cell] = []
        for t in self.temperatures:
            for m, spec in specs.items():
                replicate = t == 0 and not spec.per_attempt and self.base.n > 1
                lengths: tuple[int | None, ...] = self.rsp_lengths if spec.uses_length else (own_length[m],)
                scales: tuple[float | None, ...] = self.rsp_scales if spec.uses_scale else (None,)
                cells += [Cell(m, t, L, a, replicate) for L in lengths for a in scales]
        return cells


@dataclass
class SweepResult:
    out: Path
    cells: list[Cell]
    rows: list[dict]
    ran: list[str]  # cells that generated attempts in this call
    skipped: list[str]  # cells already finished on disk


def _finished_samples(cell_dir: Path, cfg: EvalConfig, problems: int) -> list[SampleRecord] | None:
    """The samples of a cell finished on disk with the settings `cfg`, or None: run_eval then starts or
    resumes it, or explains why it cannot (another run, other settings, a newer rsp)."""
    try:
        saved, records = read_eval_run(cell_dir)
    except RunDirError:
        return None
    if saved.config != cfg.to_dict():
        return None
    keys = {(r["problem_id"], r["attempt"]) for r in records}
    return records if len(keys) >= problems * cfg.n else None


def _expand(records: Sequence[Record], n: int) -> list[Record]:
    """Count a deterministic cell's single attempt as all N attempts (they would be identical)."""
    return [{**r, "attempt": a, "replicated_from": 0} for r in records if r["attempt"] == 0 for a in range(n)]


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    lm: ModelBase | None = None,
    progress: bool = True,
    generator: Generator | None = None,
) -> SweepResult:
    """Run (or resume, or extend) the grid into `out`, then write the comparison table and plots.

    One `Generator` (model + engine) serves every cell: a vLLM engine starts once per sweep, not per cell.
    """
    config.validate()
    out = Path(out)
    prepare_run_dir(out, config.identity(), kind="sweep")
    cells = config.cells()
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        why = "check --rsp-lengths / --rsp-scales for values that print alike"
        raise ConfigError(f"two sweep cells share a name; {why}")
    grid = {**config_dict(config, exclude=("base",)), "cells": names}
    atomic_write_text(out / "grid.json", json.dumps(grid, indent=2) + "\n")
    problems = len(config.base.load_task().problems)
    n = config.base.n
    records: dict[str, Sequence[Record]] = {}
    ran, skipped = [], []
    bar = tqdm(cells, disable=not progress, unit="cell", desc="sweep")
    for cell in bar:
        bar.set_postfix_str(cell.name)
        cfg = cell.eval_config(config.base, n, config.base.method_options)
        cell_dir = out / "cells" / cell.name
        finished = _finished_samples(cell_dir, cfg, problems)
        if finished is not None:
            recs: Sequence[Record] = finished
            skipped.append(cell.name)
        else:
            generator = generator or Generator.from_args(config.base, lm)
            run = run_eval(cfg, cell_dir, generator=generator, progress=progress)
            recs = run.records
            write_eval_report(cell_dir, recs, run.config.to_dict(), seconds=run.seconds)
            ran.append(cell.name)
        records[cell.name] = _expand(recs, n) if cell.replicate else recs
    bar.close()
    rows = compare_cells(cells, records, n, seed=config.base.seed)
    write_sweep_report(out, config, rows)
    return SweepResult(out, cells, rows, ran, skipped)


def table_ks(n: int) -> list[int]:
    ks = [k for k in (1, 4, 16) if k <= n]
    return ks if n >= 16 or n in ks else [*ks, n]


def compare_cells(
    cells: list[Cell], records: dict[str, Sequence[Record]], n: int, *, seed: int = 0
) -> list[dict]:
    """One row per cell: metrics with 95% CIs, and paired differences against temperature-only at its T."""
    metrics = ["accuracy", *[f"pass@{k}" for k in table_ks(n)], f"maj@{min(16, n)}"]
    rows = []
    for cell in cells:
        attempts = 1 if cell.replicate else n
        labels = (cell.name, cell.method, cell.length, cell.rsp_scale, cell.temperature, attempts)
        row: dict = dict(zip(CSV_COLUMNS[:-1], labels, strict=True))  # "problems" comes from the summary
        base_name = Cell(BASELINE, cell.temperature).name
        recs = [{**r, "method": "cell"} for r in records.get(cell.name, [])]
        arms = ["cell"]
        if cell.name != base_name and base_name in records:  # paired with temperature-only at this T
            recs = [{**r, "method": "base"} for r in records[base_name]] + recs
            arms = ["base", "cell"]
        summary = summarise(recs, arms, n, seed=seed)
        row["problems"] = summary["problems"]
        cell_metrics, paired = summary["methods"].get("cell", {}), summary["paired"].get("cell", {})
        for metric in metrics:
            row[metric] = cell_metrics.get(metric)
            row[f"delta {metric}"] = paired.get(metric)
        row["passk_curve"] = (
            {k: cell_metrics[f"pass@{k}"]["mean"] for k in range(1, n + 1)} if cell_metrics else {}
        )
        rows.append(row)
    return rows


def _metric_names(rows: list[dict]) -> list[str]:
    skip = {*CSV_COLUMNS, "passk_curve"}
    return [k for k in rows[0] if k not in skip and not k.startswith("delta ")] if rows else []


def markdown_report(rows: list[dict], config: SweepConfig) -> str:
    metrics = _metric_names(rows)
    b = config.base
    lines = [
        f"# Sweep: {b.model} on {b.task} ({b.split}, {rows[0]['problems'] if rows else 0} problems, "
        f"n={b.n} attempts, seed {b.seed}, max {b.max_new_tokens} new tokens, position {b.rsp_position})",
        "",
        "Cells: mean over problems [95% bootstrap CI over problems]. `runs` = attempts generated per problem "
        "(1 for a deterministic cell: greedy decoding with an injection that is the same for every attempt, "
        "whose single answer stands for all N).",
        "",
        "| cell | method | L | rsp_scale | T | runs | " + " | ".join(metrics) + " |",
        "|---" * (6 + len(metrics)) + "|",
    ]
    for r in rows:
        cis = " | ".join(ci_text(r[m]) for m in metrics)
        lines.append(
            f"| {r['cell']} | {r['method']} | {_dash(r['L'])} | {_dash(r['rsp_scale'])} | "
            f"{r['temperature']:g} | {r['attempts_run']} | {cis} |"
        )
    lines += [
        "",
        "Paired difference against temperature-only at the same temperature, on the same problems "
        "(mean [95% CI], two-sided sign-flip permutation p):",
        "",
        "| cell | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
        "|---" * (1 + len(metrics)) + "|",
    ]
    for r in rows:
        if r["method"] != BASELINE:
            deltas = " | ".join(ci_text(r[f"delta {m}"], signed=True) for m in metrics)
            lines.append(f"| {r['cell']} | {deltas} |")
    best = [r for r in rows if r["accuracy"]]
    if best:
        top = max(best, key=lambda r: r["accuracy"]["mean"])
        last = f"pass@{table_ks(b.n)[-1]}"
        top_pass = max(best, key=lambda r: r[last]["mean"])
        lines += [
            "",
            f"Highest mean accuracy: `{top['cell']}` ({ci_text(top['accuracy'])}). "
            f"Highest {last}: `{top_pass['cell']}` ({ci_text(top_pass[last])}). "
            "With this many problems, differences whose paired CI includes 0 are not evidence either way.",
        ]
    lines += [
        "",
        "Plots: `plots/passk_<method>.png` (pass@k per temperature, one line per L/scale, "
        "temperature-only dashed), `plots/heatmap_<method>_a<scale>.png` (accuracy and its paired difference "
        "over L x temperature).",
    ]
    return "\n".join(lines) + "\n"


def _dash(v) -> str:
    return "-" if v is None else f"{v:g}"


def csv_report(rows: list[dict]) -> str:
    """One line per cell; what a cell lacks (an L, a scale, a paired difference) is left empty."""
    metrics = _metric_names(rows)
    header = [*CSV_COLUMNS, *(f"{m}{s}" for m in metrics for s in ("", " ci_low", " ci_high"))]
    header += [f"delta {m}{s}" for m in metrics for s in ("", " ci_low", " ci_high", " p")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:  # csv writes None as ""
        line = [r[c] for c in CSV_COLUMNS]
        line += [(r[m] or {}).get(key, "") for m in metrics for key in ("mean", "ci_low", "ci_high")]
        deltas = [r[f"delta {m}"] or {} for m in metrics]
        line += [d.get(key, "") for d in deltas for key in ("mean", "ci_low", "ci_high", "p_value")]
        w.writerow(line)
    return buf.getvalue()


def write_sweep_report(out: Path, config: SweepConfig, rows: list[dict]) -> None:
    atomic_write_text(out / "sweep.md", markdown_report(rows, config))
    atomic_write_text(out / "sweep.csv", csv_report(rows))
    everything = {"config": config.identity(), "rows": rows}
    atomic_write_text(out / "sweep.json", json.dumps(everything, indent=2) + "\n")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if any(r["problems"] for r in rows):
        plot_passk_per_method(rows, plots, config)
        plot_heatmaps(rows, plots, config)


def plot_passk_per_method(rows: list[dict], plots: Path, config: SweepConfig) -> None:
    """One figure per method: a panel per temperature, a line per (L, scale), temperature-only dashed."""
    plt = pyplot()
    temps = list(config.temperatures)
    baseline = {r["temperature"]: r for r in rows if r["method"] == BASELINE}
    for method in dict.fromkeys(r["method"] for r in rows):
        fig, axes = plt.subplots(1, len(temps), figsize=(3.2 * len(temps), 3.2), sharey=True, squeeze=False)
        for ax, t in zip(axes[0], temps, strict=True):
            for r in rows:
                if r["method"] != method or r["temperature"] != t or not r["passk_curve"]:
                    continue
                ks, vals = zip(*sorted((int(k), v) for k, v in r["passk_curve"].items()), strict=True)
                scale = "" if r["rsp_scale"] is None else f" scale={r['rsp_scale']:g}"
                label = method if r["L"] is None else f"L={r['L']}{scale}"
                ax.plot(ks, vals, marker="o", ms=2, lw=1.2, label=label)
            base = baseline.get(t)
            if method != BASELINE and base and base["passk_curve"]:
                ks, vals = zip(*sorted((int(k), v) for k, v in base["passk_curve"].items()), strict=True)
                ax.plot(ks, vals, "k--", lw=1.2, label="temperature only")
            ax.set_xscale("log", base=2)
            ax.set_title("greedy" if t == 0 else f"T={t:g}", fontsize=9)
            ax.set_xlabel("k")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("pass@k")
        axes[0][-1].legend(fontsize=6, loc="lower right")
        base_run = config.base
        fig.suptitle(f"{method}: pass@k on {base_run.task} ({base_run.model}, n={base_run.n})", fontsize=9)
        fig.tight_layout()
        fig.savefig(plots / f"passk_{method}.png", dpi=110)
        plt.close(fig)


def plot_heatmaps(rows: list[dict], plots: Path, config: SweepConfig) -> None:
    """Per method with an L axis: mean accuracy, and its paired difference to temperature-only, over L x T."""
    plt = pyplot()
    temps = list(config.temperatures)
    for method in dict.fromkeys(r["method"] for r in rows if r["L"] is not None):
        for scale in dict.fromkeys(r["rsp_scale"] for r in rows if r["method"] == method):
            sel = [r for r in rows if r["method"] == method and r["rsp_scale"] == scale]
            lengths = sorted({r["L"] for r in sel})
            acc = np.full((len(lengths), len(temps)), np.nan)
            delta = np.full_like(acc, np.nan)
            for r in sel:
                i, j = lengths.index(r["L"]), temps.index(r["temperature"])
                if r["accuracy"]:
                    acc[i, j] = r["accuracy"]["mean"]
                if r["delta accuracy"]:
                    delta[i, j] = r["delta accuracy"]["mean"]
            fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.6 * len(temps), 1.6 + 0.45 * len(lengths)))
            span = max(0.05, float(np.nanmax(np.abs(delta)))) if np.isfinite(delta).any() else 0.05
            for ax, data, title, cmap, lim in (
                (axes[0], acc, "mean accuracy", "viridis", (0, 1)),
                (axes[1], delta, "Δ accuracy vs temperature only", "RdBu", (-span, span)),
            ):
                im = ax.imshow(data, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
                ax.set_xticks(range(len(temps)), ["greedy" if t == 0 else f"{t:g}" for t in temps])
                ax.set_yticks(range(len(lengths)), [str(L) for L in lengths])
                ax.set_xlabel("temperature")
                ax.set_ylabel("L")
                ax.set_title(title, fontsize=9)
                for (i, j), v in np.ndenumerate(data):
                    if np.isfinite(v):
                        text = f"{v:+.2f}" if data is delta else f"{v:.2f}"
                        color = "white" if data is acc and v < 0.5 else "black"
                        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
                fig.colorbar(im, ax=ax, fraction=0.046)
            scaled = "" if scale is None else f" (scale={scale:g})"
            fig.suptitle(f"{method}{scaled} on {config.base.task}", fontsize=9)
            fig.tight_layout()
            fig.savefig(plots / f"heatmap_{method}{'' if scale is None else f'_a{scale:g}'}.png", dpi=110)
            plt.close(fig)
