"""Summaries of evaluation records: per-method Pass@k / maj@k with CIs, paired tests, table and plot."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsp.metrics.passk import maj_at_k, pass_at_k
from rsp.metrics.stats import bootstrap_ci, paired_comparison
from rsp.records import read_eval_run
from rsp.runio import atomic_write_text
from rsp.tasks.grading import canonical_answer


def report_ks(n: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    return ks if n in ks else [*ks, n]


# Records are read by key (the fields of `rsp.records.SampleRecord`); a Mapping also admits the plain dicts
# that callers derive from them (a sweep's replicated attempts, a comparison's relabelled arms).
Record = Mapping[str, Any]


def per_problem_table(
    records: Sequence[Record], methods: Sequence[str], n: int
) -> dict[str, dict[str, list[Record]]]:
    """method -> problem_id -> records (only problems complete for every method, sorted by attempt)."""
    table: dict[str, dict[str, list[Record]]] = {m: defaultdict(list) for m in methods}
    for r in records:
        if r["method"] in table:
            table[r["method"]][r["problem_id"]].append(r)
    finished = [{pid for pid, rs in table[m].items() if len(rs) >= n} for m in methods]
    complete = set.intersection(*finished) if finished else set()
    return {
        m: {
            pid: sorted(rs, key=lambda r: r["attempt"])[:n] for pid, rs in table[m].items() if pid in complete
        }
        for m in methods
    }


def summarise(records: Sequence[Record], methods: Sequence[str], n: int, *, seed: int = 0) -> dict:
    """Per-method metrics with 95% bootstrap CIs over problems, and paired differences vs the first method."""
    table = per_problem_table(records, methods, n)
    pids = sorted(next(iter(table.values())).keys()) if table else []
    ks = report_ks(n)
    out: dict = {"n": n, "problems": len(pids), "ks": ks, "methods": {}, "paired": {}}
    if not pids:
        return out
    per_problem: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        rows = [table[m][pid] for pid in pids]
        correct = [[bool(r["correct"]) for r in rs] for rs in rows]
        answers = [[canonical_answer(r.get("extracted")) for r in rs] for rs in rows]
        vals: dict[str, np.ndarray] = {"accuracy": np.array([np.mean(c) for c in correct])}
        for k in range(1, n + 1):
            vals[f"pass@{k}"] = np.array([pass_at_k(n, sum(c), k) for c in correct])
        pairs = list(zip(answers, correct, strict=True))
        for k in ks:
            vals[f"maj@{k}"] = np.array([maj_at_k(a, c, k, seed=seed) for a, c in pairs])
        distinct = [len({x for x in a if x is not None}) for a in answers]
        vals["distinct_answers"] = np.array(distinct, dtype=float)
        vals["mean_tokens"] = np.array([np.mean([r.get("num_tokens", 0) for r in rs]) for rs in rows])
        per_problem[m] = vals
        out["methods"][m] = {key: bootstrap_ci(v, seed=seed).to_dict() for key, v in vals.items()}
    base = methods[0]
    for m in methods[1:]:
        out["paired"][m] = {
            key: paired_comparison(per_problem[m][key], per_problem[base][key], seed=seed).to_dict()
            for key in ["accuracy", *[f"pass@{k}" for k in ks], *[f"maj@{k}" for k in ks]]
        }
    out["baseline"] = base
    return out


def ci_text(d: dict | None, digits: int = 3, *, signed: bool = False) -> str:
    """An estimate as "mean [low, high]", with " p=..." when it is a paired difference; "-" for none."""
    if not d:
        return "-"
    f = f"{'+' if signed else ''}.{digits}f"
    text = f"{d['mean']:{f}} [{d['ci_low']:{f}}, {d['ci_high']:{f}}]"
    return text + (f" p={d['p_value']:.2f}" if "p_value" in d else "")


def markdown_table(summary: dict) -> str:
    """The summary as Markdown: one row per method, then paired differences against the baseline."""
    if not summary.get("problems"):
        return "No complete problems yet.\n"
    ks = summary["ks"]
    cols = ["accuracy", *[f"pass@{k}" for k in ks], f"maj@{ks[-1]}", "distinct_answers", "mean_tokens"]
    lines = [
        f"Problems: {summary['problems']}, attempts per problem: {summary['n']}. "
        "Cells: mean over problems [95% bootstrap CI over problems].",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for m, vals in summary["methods"].items():
        cells = [ci_text(vals[c], 1 if c in ("distinct_answers", "mean_tokens") else 3) for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary.get("paired"):
        pcols = ["accuracy", *[f"pass@{k}" for k in ks], f"maj@{ks[-1]}"]
        lines += [
            "",
            f"Paired difference against `{summary['baseline']}` on the same problems "
            "(mean [95% CI], two-sided sign-flip permutation p):",
            "",
            "| method | " + " | ".join(pcols) + " |",
            "|---" * (len(pcols) + 1) + "|",
        ]
        for m, vals in summary["paired"].items():
            cells = [ci_text(vals[c], signed=True) for c in pcols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (matplotlib is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_passk(summary: dict, path: Path, title: str) -> None:
    plt = pyplot()
    n = summary["n"]
    ks = list(range(1, n + 1))
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, vals in summary["methods"].items():
        curve = [vals[f"pass@{k}"] for k in ks]
        ax.plot(ks, [c["mean"] for c in curve], marker="o", ms=3, label=m)
        ax.fill_between(ks, [c["ci_low"] for c in curve], [c["ci_high"] for c in curve], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (attempts)")
    ax.set_ylabel("pass@k (unbiased estimator)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    note = f"{summary['problems']} problems, n={n}; bands: 95% bootstrap CI over problems"
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_eval_report(
    out: Path, records: Sequence[Record], config: dict, *, seconds: float | None = None
) -> dict:
    """Write summary.json, summary.md and passk.png into a run directory; return the summary."""
    methods = list(config["methods"])
    summary = summarise(records, methods, int(config["n"]), seed=int(config.get("seed", 0)))
    summary["config"] = config
    if seconds is not None:
        summary["seconds"] = seconds
    title = (
        f"{config['model']} on {config['task']} (T={config['temperature']}, "
        f"RSP L={config['rsp_length']}, {config.get('rsp_position', config.get('position'))})"
    )
    write_summary(out, summary, title, f"# Evaluation: {title}\n\n")
    return summary


def write_summary(out: Path, summary: dict, title: str, header: str) -> None:
    """summary.json, summary.md (`header`, then the table) and passk.png (titled `title`) in `out`."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", header + markdown_table(summary) + "\n![pass@k](passk.png)\n")
    if summary.get("problems"):
        plot_passk(summary, out / "passk.png", title)


def report_run(run: Path) -> dict:
    """`rsp report`: (re)write an eval run's summary from its config.json and samples; return the summary."""
    saved, records = read_eval_run(run)
    return write_eval_report(run, records, saved.config)


def parse_arm(spec: str) -> tuple[str, Path, str]:
    """`LABEL=RUN_DIR:METHOD` -> (label, run dir, method)."""
    label, sep, rest = spec.partition("=")
    run, sep2, method = rest.rpartition(":")
    if not sep or not sep2 or not label or not run or not method:
        example = "e.g. before=runs/base:rsp"
        raise ValueError(f"--arm must look like LABEL=RUN_DIR:METHOD ({example}), got {spec!r}")
    return label, Path(run), method


def compare_runs(arms: Sequence[tuple[str, Path, str]], *, seed: int = 0) -> dict:
    """Paired summary of (label, run, method) arms from different eval runs on the same problems (a base
    model and a trained one live in separate runs; pairing by problem gives the tighter intervals). The runs
    must agree on task and n; the first arm is the baseline."""
    if len(arms) < 2:
        raise ValueError("rsp compare needs at least two --arm values")
    labels = [a[0] for a in arms]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--arm labels must be distinct, got {labels}")
    merged: list[Record] = []
    ns, tasks = set(), set()
    for label, run, method in arms:
        saved, records = read_eval_run(run)
        config = saved.config
        if method not in config["methods"]:
            raise ValueError(f"{run} has no method {method!r} (it has {', '.join(config['methods'])})")
        ns.add(int(config["n"]))
        tasks.add(
            (config["task"], config.get("arith_steps"), config.get("arith_max_value"), config.get("split"))
        )
        merged += [{**r, "method": label} for r in records if r["method"] == method]
    if len(ns) != 1 or len(tasks) != 1:
        why = f"runs differ in attempts per problem {sorted(ns)} or task {sorted(tasks, key=str)}"
        raise ValueError(f"{why}; paired comparison needs the same problems and n")
    summary = summarise(merged, labels, ns.pop(), seed=seed)
    summary["arms"] = [{"label": a[0], "run": str(a[1]), "method": a[2]} for a in arms]
    return summary
