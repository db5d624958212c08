"""`rsp analyze`: mechanism metrics for every method of an `rsp eval` run, each attempt's injection
rebuilt from its recorded seed, so a saved run needs no regeneration and gives the live numbers."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import rsp.analysis.distributions as dist
from rsp.analysis.scoring import (
    attention_mass,
    columns_before_insertion,
    teacher_forced_logits,
    valid_positions,
)
from rsp.core.injection import NoInjection
from rsp.engines.hf import HFEngine
from rsp.evaluation import EvalConfig
from rsp.methods import build_method
from rsp.models.loading import LoadedModel, load_model
from rsp.records import SampleRecord, read_eval_run
from rsp.runio import atomic_write_text
from rsp.tasks.prompts import PromptBuilder


@dataclass
class AnalysisOptions:
    k: int = 32  # generated positions analysed
    batch_size: int = 16
    max_problems: int | None = None
    attention: bool = True


def _nanmean(rows) -> np.ndarray:
    """Mean over the first axis ignoring NaN (positions beyond a completion's end)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(rows, dtype=np.float64), axis=0)


def analyse_run(
    run_dir: str | Path,
    *,
    options: AnalysisOptions | None = None,
    lm: LoadedModel | None = None,
    progress: bool = True,
) -> dict:
    """Compute all metrics for a finished (or partial) eval run; returns a JSON-serialisable dict."""
    o = options or AnalysisOptions()
    run_dir = Path(run_dir)
    saved, records = read_eval_run(run_dir)
    cfg = EvalConfig.from_dict(saved.config)
    if not records:
        raise ValueError(f"{run_dir} has no samples to analyse")
    task = cfg.load_task()
    problems = {p.id: p for p in task.problems}
    by_method: dict[str, dict[str, list[SampleRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(records, key=lambda r: r["attempt"]):
        by_method[r["method"]][r["problem_id"]].append(r)
    methods = [m for m in cfg.methods if m in by_method]
    pids = [p.id for p in task.problems if all(p.id in by_method[m] for m in methods)]
    if o.max_problems:
        pids = pids[: o.max_problems]
    if lm is None:
        lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    builder = PromptBuilder.for_task(lm.tokenizer, task, style=cfg.prompt_style)  # type: ignore[arg-type]
    injections = {m: build_method(m, lm, cfg.rsp_config(m)) for m in methods}
    # trajectories for KL: the first method that injects nothing
    baseline = next((m for m in methods if injections[m].length == 0), None)
    # attention of a method without injection: on as many prompt tokens as the longest injection has slots
    ref_len = max((i.length for i in injections.values()), default=0) or cfg.rsp_length
    k, temperature = o.k, cfg.temperature

    per_problem: dict[str, dict[str, list[np.ndarray]]] = {m: defaultdict(list) for m in methods}
    attention_by_layer: dict[str, list[np.ndarray]] = defaultdict(list)
    total_batches = sum(math.ceil(len(by_method[m][pid]) / o.batch_size) for m in methods for pid in pids)
    bar = tqdm(total=total_batches, disable=not progress, desc="analyze", unit="batch")
    for pid in pids:
        prompt = builder.build(problems[pid])
        plain_trajs = [r["token_ids"] for r in by_method[baseline][pid]] if baseline else []
        for m in methods:
            inj = injections[m]
            recs = by_method[m][pid]
            rows: dict[str, list[np.ndarray]] = defaultdict(list)  # metric -> one array per batch
            for c0 in range(0, len(recs), o.batch_size):
                chunk = recs[c0 : c0 + o.batch_size]
                seeds = [r["rsp_seed"] for r in chunk]
                trajs = [r["token_ids"] for r in chunk]
                ps = [prompt] * len(chunk)
                valid = valid_positions(trajs, k)
                logp = dist.log_probs(teacher_forced_logits(lm, ps, inj, seeds, trajs, k), temperature)
                rows["entropy"].append(dist.entropy(logp).masked_fill(~valid, float("nan")).numpy())
                rows["top1"].append(logp.exp().amax(-1).masked_fill(~valid, float("nan")).numpy())
                if inj.length > 0 and plain_trajs:
                    # KL on the same no-injection trajectory, scored with and without this attempt's injection
                    ref = [plain_trajs[i % len(plain_trajs)] for i in range(c0, c0 + len(chunk))]
                    lp_inj = dist.log_probs(teacher_forced_logits(lm, ps, inj, seeds, ref, k), temperature)
                    plain = NoInjection(inj.position)
                    lp_plain = dist.log_probs(
                        teacher_forced_logits(lm, ps, plain, [None] * len(chunk), ref, k), temperature
                    )
                    kl = dist.kl_divergence(lp_inj, lp_plain)
                    rows["kl"].append(kl.masked_fill(~valid_positions(ref, k), float("nan")).numpy())
                if o.attention:
                    cols = None
                    if inj.length == 0:
                        batch, _ = HFEngine(lm).prepare(ps, inj, seeds)
                        cols = columns_before_insertion(ps, inj.position, ref_len, batch)
                    mass = attention_mass(lm, ps, inj, seeds, trajs, k, key_columns=cols)
                    rows["attention"].append(mass.masked_fill(~valid.unsqueeze(1), float("nan")).numpy())
                bar.update(1)
            pp = per_problem[m]
            for name, batches in rows.items():
                x = np.concatenate(batches)  # (attempts, k), attention (attempts, layers, k)
                pp[name].append(_nanmean(x.mean(axis=1) if name == "attention" else x))
                if name == "attention":
                    attention_by_layer[m].append(_nanmean(x))
            seqs = [r["token_ids"] for r in recs]
            pp["distinct_prefixes"].append(np.array(dist.distinct_prefixes(seqs, k), dtype=float))
            pp["first_divergence"].append(np.array([dist.mean_first_divergence(seqs)]))
            pp["distinct_n"].append(np.array([dist.distinct_n(seqs, n) for n in range(1, 5)]))
            pp["self_bleu"].append(np.array([dist.self_bleu(seqs)]))
            answers = {r.get("extracted") for r in recs if r.get("extracted")}
            pp["distinct_answers"].append(np.array([len(answers)], dtype=float))
            pp["length"].append(np.array([np.mean([len(s) for s in seqs])]))
    bar.close()
    layer_types = list(getattr(lm.model.config, "layer_types", None) or [])
    sliding = "sliding_attention" in layer_types
    metrics = {m: {name: _ci(rows) for name, rows in per_problem[m].items() if rows} for m in methods}
    for m, layers in attention_by_layer.items():
        metrics[m]["attention_by_layer"] = {"mean": _nanmean(layers).tolist()}
    return {
        "config": cfg.to_dict(),
        "k": k,
        "problems": len(pids),
        "methods": methods,
        "baseline": baseline,
        "temperature_for_entropy": temperature if temperature > 0 else 1.0,
        "sliding_window": getattr(lm.model.config, "sliding_window", None) if sliding else None,
        "layer_types": layer_types,
        "metrics": metrics,
    }


def _ci(rows: list[np.ndarray], seed: int = 0, n_boot: int = 1000) -> dict:
    """Mean over problems with a percentile bootstrap CI, per element (NaN-aware)."""
    x = np.stack(rows)  # (problems, ...)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (positions no attempt reached)
        mean = np.nanmean(x, axis=0)
        boots = np.nanmean(x[idx], axis=1)
        low, high = np.nanquantile(boots, 0.025, axis=0), np.nanquantile(boots, 0.975, axis=0)
    return {"mean": mean.tolist(), "ci_low": low.tolist(), "ci_high": high.tolist()}


def write_metrics(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1) + "\n")
    lines = ["method,metric,position,mean,ci_low,ci_high"]
    for m, metrics in result["metrics"].items():
        for name, v in metrics.items():
            if "ci_low" not in v:
                continue
            for i, (a, lo, hi) in enumerate(zip(v["mean"], v["ci_low"], v["ci_high"], strict=True)):
                lines.append(f"{m},{name},{i + 1},{a:.6g},{lo:.6g},{hi:.6g}")
    atomic_write_text(out / "metrics.csv", "\n".join(lines) + "\n")
