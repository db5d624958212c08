"""`python -m experiments.findings report`: summaries, plots and verdicts from whatever runs have finished.

Why generated sections inside a hand-written page: the verdict table, the cell table, the cost and
the list of commands must never drift from the runs and the cell list, so they are rewritten between
`<!-- BEGIN generated:NAME -->` / `<!-- END generated:NAME -->` markers each time, while the reading of
the results around them stays prose. Only summaries are written (per-cell means, intervals, per-problem
correct counts, pass@k curves) and the ledger of graded attempts (`experiments.findings.ledger`), never
completions; the raw JSONL stays in runs/ (git-ignored).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from pathlib import Path

from experiments.findings.analyse import METRICS, CellResult, bank_run, evaluate_all, load_run
from experiments.findings.cells import (
    DIFFICULTY_BY_KEY,
    FAST_DTYPE,
    MODEL_BY_KEY,
    N_ATTEMPTS,
    N_PROBLEMS,
    ROOT,
    SCREEN_ATTEMPTS,
    SCREEN_MAX_PROBLEMS,
    SOFT_PROMPT_BUDGET_S,
    runs,
    steps,
)
from experiments.findings.ledger import LEDGER, TIMING
from experiments.findings.plots import plot_best_worst, plot_delta_vs_base, plot_heatmaps
from experiments.findings.verdicts import Verdict, all_verdicts
from rsp.runio import atomic_write_text

ANALYSIS_FILES = (
    Path("docs/analysis/smollm2-arith/metrics.json"),
    Path("docs/analysis/gemma3-arith/metrics.json"),
)
DAPO_SUMMARY = Path("docs/results/dapo-seeds/summary.json")  # experiments/dapo_seeds_summary.py


def _ci(d: dict | None, signed: bool = True) -> str:
    if not d:
        return "-"
    f = "+.3f" if signed else ".3f"
    return f"{d['mean']:{f}} [{d['ci_low']:{f}}, {d['ci_high']:{f}}]"


# the per-cell columns of cells.csv, before the metric columns
CELL_COLUMNS = (
    "key",
    "model",
    "difficulty",
    "axis",
    "treatment",
    "reference",
    "temperature",
    "L",
    "scale",
    "position",
    "problems",
    "complete",
)


def csv_table(results: list[CellResult]) -> str:
    header = list(CELL_COLUMNS)
    for m in METRICS:
        header += [
            f"{m} reference",
            f"{m} treatment",
            f"delta {m}",
            f"delta {m} ci_low",
            f"delta {m} ci_high",
            f"delta {m} p",
        ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in results:
        s = r.summary()
        row = [s[k] for k in CELL_COLUMNS]
        for m in METRICS:
            if m in s:
                d = s[m]
                row += [
                    round(d["reference"]["mean"], 4),
                    round(d["treatment"]["mean"], 4),
                    round(d["delta"]["mean"], 4),
                    round(d["delta"]["ci_low"], 4),
                    round(d["delta"]["ci_high"], 4),
                    round(d["delta"]["p_value"], 4),
                ]
            else:
                row += [""] * 6
        w.writerow(row)
    return buf.getvalue()


def _status(r: CellResult) -> str:
    if r.complete:
        return f"{r.problems}"
    return f"{r.problems}/{N_PROBLEMS} (partial)" if r.problems else "not run"


def cells_markdown(results: list[CellResult]) -> str:
    lines = [
        "| model | difficulty | axis | treatment | reference | problems | reference pass@1 | Δ pass@1 | "
        "Δ pass@8 | Δ pass@32 | Δ maj@32 |",
        "|---" * 11 + "|",
    ]
    for r in results:
        c = r.cell
        if r.problems:
            ref = f"{float(r.reference['pass@1'].mean()):.3f}"
            deltas = [
                _ci(r.delta(m)) if r.has(m) else "n/a" for m in ("pass@1", "pass@8", "pass@32", "maj@32")
            ]
        else:
            ref, deltas = "-", ["-"] * 4
        lines.append(
            f"| {c.treatment.model.key} | {c.treatment.difficulty.key} | {c.axis} | {c.treatment.name} | "
            f"{c.reference.name} | {_status(r)} | {ref} | " + " | ".join(deltas) + " |"
        )
    return "\n".join(lines)


def hurts_markdown(results: list[CellResult]) -> str:
    """Cells whose unadjusted paired 95% interval lies below zero for a metric (treatment vs temperature)."""
    lines = []
    for r in results:
        if not r.problems:
            continue
        bad = [(m, r.delta(m)) for m in METRICS if r.has(m)]
        bad = [(m, d) for m, d in bad if d["ci_high"] < 0]
        if bad:
            tag = "" if r.complete else f" ({r.problems}/{N_PROBLEMS} problems so far)"
            lines.append(f"- `{r.cell.key}`{tag}: " + "; ".join(f"Δ {m} {_ci(d)}" for m, d in bad))
    return "\n".join(lines) if lines else "- No cell so far has a paired 95% interval entirely below zero."


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    lines = ["| claim | verdict | metric | complete cells | holds in | hurts in |", "|---" * 6 + "|"]
    for v in verdicts:
        lines.append(
            f"| {v.claim} | **{v.verdict}** | {v.metric} | {v.cells_complete} of {v.cells_total} | "
            f"{'; '.join(v.holds_in) or '-'} | {'; '.join(v.hurts_in) or '-'} |"
        )
    lines.append("")
    for v in verdicts:
        if not v.evidence and not v.note:
            continue
        lines.append(f"- {v.claim}:")
        for e in v.evidence:
            if "low" in e:
                how = f"permutation p={e['p_value']:.3f}" if "p_value" in e else "t interval over seeds"
                lines.append(
                    f"  - `{e['cell']}`: {e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] "
                    f"(interval at level {e['level']:.4f}, {how})"
                )
            else:
                lines.append(
                    f"  - {e['cell']}: entropy at token 1 {e['entropy_t1_rsp']:.2f} (RSP) vs "
                    f"{e['entropy_t1_plain']:.2f} (plain); KL t=1 {e['kl_t1']:.2f}, t=16 {e['kl_t16']:.2f}; "
                    f"lifted: {e['lifted']}, diluted: {e['diluted']}"
                )
        if v.note:
            lines.append(f"  - {v.note}")
    return "\n".join(lines)


def read_timing(path: Path) -> list[dict]:
    """The timing log's records; a torn line (a writer killed mid-line) is reported and left out."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"[findings] {path}:{n}: not a timing record, left out: {line[:80]!r}", file=sys.stderr)
    return out


def step_dtype(command: str) -> str:
    """The --dtype of a logged step's command line ("auto" when it names none)."""
    parts = command.split()
    return parts[parts.index("--dtype") + 1] if "--dtype" in parts[:-1] else "auto"


def attempt_rates(
    timing: list[dict],
    machine: str | None = None,
    task: str = "arith",
    clock: str = "cpu_s",
    dtype: str = "auto",
) -> dict[str, float]:
    """CPU seconds (`clock="wall_s"`: wall seconds) per attempt of each model on its cells of `task`
    ("arith": 128 new tokens; "gsm8k": the GSM8K screen and cells, 256) in `dtype`, one thread, over the
    logged steps, or over those that ran on `machine` (CPUs differ several-fold in bf16 speed)."""
    rates: dict[str, float] = {}
    for model in MODEL_BY_KEY:
        sel = [
            t
            for t in timing
            if t["kind"] in ("eval", "screen")
            and t["new_attempts"] > 0
            and t["out"].startswith(f"{ROOT}/{model}/{task}")
            and (machine is None or t.get("machine") == machine)
            and step_dtype(t.get("command", "")) == dtype
        ]
        attempts = sum(t["new_attempts"] for t in sel)
        if attempts:
            rates[model] = sum(t[clock] for t in sel) / attempts
    return rates


def gsm8k_ratio(timing: list[dict]) -> float:
    """How many times an arithmetic attempt a GSM8K attempt costs: the largest ratio of the two rates
    measured for one model on one machine, else the ratio of max new tokens (256 / 128). GSM8K attempts
    cost more than their token budget says (longer prompts, and most run to the limit): SmolLM2's first
    screen shards took 4.8x its arithmetic rate on the same CPU, not 2x."""
    ratios = []
    for where in {t.get("machine") for t in timing if t.get("machine")}:
        arith, gsm8k = attempt_rates(timing, where), attempt_rates(timing, where, "gsm8k")
        ratios += [gsm8k[m] / arith[m] for m in gsm8k if m in arith]
    tokens = DIFFICULTY_BY_KEY["gsm8k"].max_new_tokens / DIFFICULTY_BY_KEY["arith1"].max_new_tokens
    return max(ratios, default=tokens)


def gsm8k_rates(arith: dict[str, float], gsm8k: dict[str, float], ratio: float) -> dict[str, float]:
    """Per-attempt rates on GSM8K: measured where measured, else the arithmetic rate times `ratio`."""
    return {m: gsm8k.get(m, rate * ratio) for m, rate in arith.items()}


def local_rates(everywhere: dict[str, float], here: dict[str, float]) -> dict[str, float]:
    """Per-attempt rates for this CPU: its own where measured; for a model measured only elsewhere, the
    rate there times the largest slowdown of this CPU seen on another model (bf16 speed varies several
    fold between CPUs, so a deadline must not trust another machine's rate as it stands)."""
    slowdown = max((here[m] / everywhere[m] for m in here if m in everywhere), default=1.0)
    return {m: here.get(m, rate * slowdown) for m, rate in everywhere.items()}


def rate_tables(
    timing: list[dict], dtype: str = "auto", *, machine: str | None = None, clock: str = "cpu_s"
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-attempt rates (arithmetic, GSM8K) of each model in `dtype`, the one source of every time
    estimate: the report's (`cost`: all machines, CPU seconds) and the runner's deadline (`machine`: that
    machine's own `clock` rates, other models' rates from all machines scaled by `local_rates`). GSM8K
    rates are measured where measured, else the arithmetic rate times `gsm8k_ratio`. A model with no
    rate in `dtype` yet takes its bf16 ("auto") rate: an overestimate where fp32 is faster."""

    def one(d: str) -> tuple[dict[str, float], dict[str, float]]:
        arith = attempt_rates(timing, machine, clock=clock, dtype=d)
        if machine is not None:
            arith = local_rates(attempt_rates(timing, dtype=d), arith)
        on_gsm8k = attempt_rates(timing, machine, "gsm8k", clock=clock, dtype=d)
        return arith, gsm8k_rates(arith, on_gsm8k, gsm8k_ratio(timing))

    arith, on_gsm8k = one(dtype)
    if dtype != "auto":
        bf16 = one("auto")
        arith, on_gsm8k = bf16[0] | arith, bf16[1] | on_gsm8k
    return arith, on_gsm8k


def screen_size(model: str, ledger: Path = Path(LEDGER)) -> int:
    """How many problems the model's GSM8K screen will take: all it may screen until one qualifies, then
    N_PROBLEMS at the rate seen so far (the screen stops once that many qualify)."""
    screened, qualified = screen_tally(model, ledger)
    if not qualified:
        return SCREEN_MAX_PROBLEMS
    return min(SCREEN_MAX_PROBLEMS, math.ceil(N_PROBLEMS * screened / qualified))


def screen_tally(model: str, ledger: Path = Path(LEDGER)) -> tuple[int, int]:
    """(problems screened, problems with a correct attempt) in the model's recorded screen shards."""
    from experiments.findings.select import read_screen_records

    counts = read_screen_records(ledger / model / "gsm8k" / "screen")
    return len(counts), sum(1 for arms in counts.values() if any(a[0] for a in arms.values()))


def cost(timing_path: Path) -> dict:
    """CPU time used so far, and an estimate for the whole map from the measured CPU seconds per attempt."""
    timing = read_timing(timing_path)
    used = sum(t["cpu_s"] for t in timing)
    tables = {"auto": rate_tables(timing), FAST_DTYPE: rate_tables(timing, FAST_DTYPE)}
    rates = tables["auto"][0]
    need: dict[str, float] = {m: 0.0 for m in MODEL_BY_KEY}  # CPU seconds, for the models with a rate
    for run in runs():
        arith, on_gsm8k = tables[run.dtype]
        by_model = on_gsm8k if run.difficulty.key == "gsm8k" else arith
        if run.model.key in by_model:
            need[run.model.key] += N_PROBLEMS * run.n * by_model[run.model.key]
    screen = tables[FAST_DTYPE][1]  # the screens run in fp32 (SmolLM2's from its fourth shard)
    for m in rates:
        need[m] += screen_size(m) * SCREEN_ATTEMPTS * 2 * screen[m]
    estimate = {m: need[m] / 3600 + SOFT_PROMPT_BUDGET_S / 3600 for m in need if m in rates}
    return {
        "cpu_hours_used": used / 3600,
        "wall_hours_of_steps": sum(t["wall_s"] for t in timing) / 3600,
        "cpu_s_per_attempt": rates,
        "cpu_s_per_attempt_fp32": attempt_rates(timing, dtype=FAST_DTYPE),
        "cpu_s_per_attempt_by_machine": {
            m: attempt_rates(timing, m) for m in sorted({t["machine"] for t in timing if t.get("machine")})
        },
        "cpu_s_per_attempt_gsm8k": tables["auto"][1],
        "cpu_s_per_attempt_gsm8k_fp32": tables[FAST_DTYPE][1],
        "estimate_cpu_hours": estimate,
        "estimate_complete": len(estimate) == len(MODEL_BY_KEY),
        "steps_logged": len(timing),
    }


def cost_markdown(c: dict) -> str:
    lines = [
        f"- CPU time used so far by the map's steps: **{c['cpu_hours_used']:.2f} CPU hours** "
        f"({c['wall_hours_of_steps']:.2f} h of step wall time summed over the parallel workers; "
        f"{c['steps_logged']} step invocations logged in `{TIMING}`)."
    ]
    for tag, suffix in (("bf16", ""), ("fp32", "_fp32")):
        on_gsm8k = c.get(f"cpu_s_per_attempt_gsm8k{suffix}", {})
        for m, rate in c.get(f"cpu_s_per_attempt{suffix}", {}).items():
            lines.append(
                f"- {m}, {tag}: {rate:.2f} CPU s per attempt (measured on its arithmetic cells, 1 thread, "
                "max 128 new tokens, lowest priority on a shared 2-core machine)"
                + (f"; {on_gsm8k[m]:.2f} on GSM8K (max 256 new tokens)." if m in on_gsm8k else ".")
            )
    for machine, by_model in c.get("cpu_s_per_attempt_by_machine", {}).items():
        if by_model:
            rates = ", ".join(f"{m} {r:.2f}" for m, r in by_model.items())
            lines.append(
                f"- On `{machine}` alone: {rates} CPU s per attempt in bf16 (CPUs differ several-fold "
                "in bf16 speed: see docs/performance.md; the estimates below use all machines' steps)."
            )
    for m, hours in c["estimate_cpu_hours"].items():
        lines.append(
            f"- Estimated whole map for {m}: **{hours:.1f} CPU hours** (every cell's attempts at the "
            "rates above, in each run's dtype; GSM8K and its screen at their measured rate, else the "
            "arithmetic rate times the largest GSM8K-to-arithmetic ratio measured for one model on one "
            "machine; plus the soft-prompt budget)."
        )
    missing = [m for m in MODEL_BY_KEY if m not in c["estimate_cpu_hours"]]
    if not missing:
        total = sum(c["estimate_cpu_hours"].values())
        lines.append(
            f"- Whole map, both models: about **{total:.0f} CPU hours**; with two single-threaded workers "
            f"that is about {total / 2:.0f} h of wall time on an otherwise idle 2-core machine, several "
            "times that at the lowest priority on a busy one."
        )
    if missing:
        lines.append(f"- No measurement yet for {', '.join(missing)}: no estimate.")
    return "\n".join(lines)


def missing_markdown(root: Path | None, ledger: Path | None = None) -> str:
    lines = []
    for model in MODEL_BY_KEY:
        base = Path(LEDGER) if ledger is None else ledger
        if (base / model / "gsm8k" / "selection.json").is_file():
            continue
        screened, qualified = screen_tally(model, base)
        lines.append(
            f"- {model} GSM8K screen: {screened} problems screened, {qualified} qualify (it stops at "
            f"{N_PROBLEMS}, or after {SCREEN_MAX_PROBLEMS}; about {screen_size(model, base)} expected)"
        )
    for run in runs():
        data = load_run(run, root, ledger)
        have = len(data.correct) if data is not None else 0
        if have < N_PROBLEMS:
            state = "not started" if not have else f"{have}/{N_PROBLEMS} problems"
            lines.append(f"- `{run.out}` ({state})")
    return "\n".join(lines) if lines else "- Nothing: every run of the map has finished."


def commands_markdown() -> str:
    return "```bash\n" + "\n".join(s.command for s in steps()) + "\n```"


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- BEGIN generated:{name} -->", f"<!-- END generated:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"docs page lacks the markers for section {name!r}")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def doc_commands(text: str) -> list[str]:
    """The command lines inside the page's generated commands section."""
    m = re.search(r"<!-- BEGIN generated:commands -->\s*```bash\n(.*?)\n```", text, re.S)
    return m.group(1).splitlines() if m else []


def build_report(
    root: Path | None = None,
    out: Path = Path("docs/findings"),
    doc: Path | None = None,
    analysis_files: tuple[Path, ...] = ANALYSIS_FILES,
    dapo_summary: Path | None = DAPO_SUMMARY,
) -> dict:
    ledger = out / "ledger"  # docs/findings/ledger: the committed ledger (experiments.findings.ledger)
    for run in runs():  # a run or shard that finished since the last report enters the ledger
        for part in [run, *run.shards()]:
            bank_run(part, root, ledger)
    results = evaluate_all(root, ledger=ledger)
    verdicts = all_verdicts(results, list(analysis_files), dapo_summary)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cells.csv", csv_table(results))
    atomic_write_text(out / "cells.json", json.dumps([r.summary() for r in results], indent=1) + "\n")
    atomic_write_text(out / "verdicts.json", json.dumps([v.to_dict() for v in verdicts], indent=1) + "\n")
    c = cost(out / Path(TIMING).name)
    atomic_write_text(out / "cost.json", json.dumps(c, indent=1) + "\n")
    plots = [
        plot_delta_vs_base(results, out / "delta_vs_base.png"),
        plot_best_worst(results, out / "passk_best_worst.png"),
        plot_heatmaps(results, out / "heatmap_L_T.png"),
    ]
    sections = {
        "verdicts": verdicts_markdown(verdicts),
        "cells": cells_markdown(results),
        "hurts": hurts_markdown(results),
        "cost": cost_markdown(c),
        "missing": missing_markdown(root, ledger),
        "commands": commands_markdown(),
    }
    if doc is not None and doc.is_file():
        text = doc.read_text(encoding="utf-8")
        for name, body in sections.items():
            text = replace_section(text, name, body)
        atomic_write_text(doc, text)
    return {
        "results": results,
        "verdicts": verdicts,
        "cost": c,
        "plots": [p for p in plots if p],
        "sections": sections,
        "attempts": N_ATTEMPTS,
    }
