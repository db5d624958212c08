"""A verdict per claim: holds / does not hold / inconclusive here, by rules fixed before the data.

Why fixed rules: with dozens of cells, some interval will exclude zero by chance, and a verdict
chosen after looking is a story, not a test. These rules were written (in this docstring and the code
below) before any cell of the map had finished; changing them after seeing results would have to be
said in docs/findings.md.

Rule for a *family* of cells (one claim's comparisons, e.g. RSP vs temperature-only at every
T > 0, model and difficulty), metric m (a per-problem score, paired by problem):

1. Only complete cells count (all `N_PROBLEMS` problems in both arms). No complete cell: "not run".
2. Each cell gets a paired percentile-bootstrap interval of the mean difference (treatment minus
   reference) at the Bonferroni-adjusted level 1 - 0.05/F, where F is the number of complete cells
   in the family (20,000 resamples of problems), so the chance that any cell of a null family
   excludes zero is at most 5%.
3. "holds" if at least one cell's adjusted interval lies entirely above 0; the conditions under which
   it holds are those cells. Cells whose interval lies entirely below 0 are listed as where RSP hurts,
   whatever the verdict.
4. Otherwise "does not hold" if some cell's adjusted interval lies entirely below 0, or if every
   cell's adjusted upper bound is below `MIN_EFFECT` (= 0.05: a gain, if any, too small to matter
   at this resolution, since one problem of 32 moves a mean by 0.031).
5. Otherwise "inconclusive here".

Claim-specific rules:

* C1 (early-token entropy lifted, then diluted) is not measured by the map; it is judged from the
  committed mechanism analyses (`rsp analyze` metrics.json, one per model): "lifted" if RSP's
  entropy interval at the first generated token lies above temperature-only's; "diluted" if the
  KL(RSP || plain) interval at token 16 lies below 10% of its interval at token 1 (upper bound vs
  lower bound). Holds if both are yes for every analysed model; does not hold if either is clearly no
  (intervals the other way round) for some model; otherwise inconclusive.
* C2 (Pass@N widened together with temperature): family = RSP at L=4, scale 1, default position
  against temperature-only at the same T, for T in {0.3, 0.7, 1.0}, every model and difficulty;
  metric pass@32 (= Pass@N at N=32).
* C3 (comparable to trained soft prompts): RSP minus trained soft prompt on the same problems,
  pass@32; an equivalence-style rule with margin `MARGIN` = 0.10: holds if every complete cell's
  adjusted lower bound is above -0.10 (RSP at most 0.10 worse), does not hold if some cell's adjusted
  upper bound is below -0.10, otherwise inconclusive.
* C4 (gains in DAPO): not measured by the map; judged from `experiments/dapo_seeds.sh`'s committed summary
  (docs/results/dapo-seeds/summary.json): per seed, RSP-DAPO minus plain DAPO on the same held-out
  problems, at pass@1 and pass@32. Across the seeds, each metric gets a Student-t interval of the mean
  difference at the Bonferroni level 1 - 0.05/2 (two metrics). Fewer than `DAPO_SEEDS` complete seeds:
  "not run". Holds if some metric's interval lies above 0; does not hold if none does and some lies
  below 0, or both upper bounds are below `MIN_EFFECT`; otherwise inconclusive. This rule was written
  after seeds 0 and 1 had been read (both slightly negative, every interval including 0) and before
  seed 2 finished; it is the family rule above applied to seeds instead of cells.
* Derived questions use the family rule: D1 pass@1 over C2's family (does RSP cost per-attempt
  accuracy?); D2 pass@32 under greedy decoding (T=0); D3 RSP minus each control (rsp-shared,
  token-string, mean-vector) at pass@32 (is it the fresh randomness?).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.findings.analyse import CellResult
from experiments.findings.cells import BASE_L, CONTROLS, DEFAULT_POSITION
from rsp.metrics.stats import paired_comparison, t_interval

MIN_EFFECT = 0.05
MARGIN = 0.10
DAPO_SEEDS = 3
DAPO_METRICS = {"pass@1": "accuracy", "pass@32": "pass@32"}  # verdict name -> key in summary.json
FAMILY_ALPHA = 0.05
N_BOOT = 20_000


@dataclass
class Verdict:
    claim: str
    verdict: str  # holds | does not hold | inconclusive here | not run
    metric: str
    rule: str
    cells_complete: int
    cells_total: int
    holds_in: list[str] = field(default_factory=list)
    hurts_in: list[str] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)  # per complete cell: mean and adjusted interval
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def adjusted_intervals(results: list[CellResult], metric: str) -> list[dict]:
    """Bonferroni-adjusted paired intervals (family-wise 95%) for the complete cells."""
    complete = [r for r in results if r.complete]
    level = 1 - FAMILY_ALPHA / max(1, len(complete))
    out = []
    for r in complete:
        d = paired_comparison(
            r.treatment[metric], r.reference[metric], confidence=level, n_boot=N_BOOT
        ).to_dict()
        out.append(
            {
                "cell": r.cell.key,
                "mean": d["mean"],
                "low": d["ci_low"],
                "high": d["ci_high"],
                "level": level,
                "p_value": d["p_value"],
            }
        )
    return out


def family_verdict(claim: str, results: list[CellResult], metric: str, rule: str = "family rule") -> Verdict:
    """Rules 1-5 of the module docstring."""
    evidence = adjusted_intervals(results, metric)
    v = Verdict(claim, "not run", metric, rule, len(evidence), len(results), evidence=evidence)
    return _apply_family_rule(v) if evidence else v


def _apply_family_rule(v: Verdict) -> Verdict:
    """Rules 3-5 of the module docstring, on `v.evidence` (one interval per cell, or per metric for C4)."""
    v.holds_in = [e["cell"] for e in v.evidence if e["low"] > 0]
    v.hurts_in = [e["cell"] for e in v.evidence if e["high"] < 0]
    if v.holds_in:
        v.verdict = "holds"
    elif v.hurts_in or all(e["high"] < MIN_EFFECT for e in v.evidence):
        v.verdict = "does not hold"
    else:
        v.verdict = "inconclusive here"
    return v


def equivalence_verdict(
    claim: str, results: list[CellResult], metric: str, margin: float = MARGIN
) -> Verdict:
    """C3's rule: non-inferiority of the treatment within `margin` in every complete cell."""
    evidence = adjusted_intervals(results, metric)
    v = Verdict(
        claim,
        "not run",
        metric,
        f"equivalence margin {margin}",
        len(evidence),
        len(results),
        evidence=evidence,
    )
    if not evidence:
        return v
    v.holds_in = [e["cell"] for e in evidence if e["low"] > -margin]
    v.hurts_in = [e["cell"] for e in evidence if e["high"] < 0]
    if any(e["high"] < -margin for e in evidence):
        v.verdict = "does not hold"
    elif len(v.holds_in) == len(evidence):
        v.verdict = "holds"
    else:
        v.verdict = "inconclusive here"
    return v


def _is_default_rsp(r: CellResult) -> bool:
    t = r.cell.treatment
    return t.method == "rsp" and t.length == BASE_L and t.scale == 1.0 and t.position == DEFAULT_POSITION


def entropy_verdict(metrics_files: list[Path]) -> Verdict:
    """C1 from `rsp analyze` metrics.json files (see the module docstring)."""
    v = Verdict(
        "C1 early-token entropy lifted, then diluted",
        "not run",
        "entropy / KL by position",
        "analysis rule",
        0,
        len(metrics_files),
    )
    lifted, diluted, notes = [], [], []
    for path in metrics_files:
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        m = data["metrics"]
        plain, rsp = m[data.get("baseline", "temperature")], m["rsp"]
        e_r, e_p, kl = rsp["entropy"], plain["entropy"], rsp.get("kl")
        up = e_r["ci_low"][0] > e_p["ci_high"][0]
        down = e_r["ci_high"][0] < e_p["ci_low"][0]
        lifted.append("yes" if up else "no" if down else "unclear")
        if kl is None or len(kl["mean"]) < 16:
            diluted.append("unclear")
        else:
            yes = kl["ci_high"][15] < 0.1 * kl["ci_low"][0]
            no = kl["ci_low"][15] > 0.1 * kl["ci_high"][0]
            diluted.append("yes" if yes else "no" if no else "unclear")
        model = data.get("config", {}).get("model", path.parent.name)
        v.evidence.append(
            {
                "cell": f"{model} ({data.get('problems')} problems, {path.parent})",
                "entropy_t1_rsp": e_r["mean"][0],
                "entropy_t1_plain": e_p["mean"][0],
                "kl_t1": kl["mean"][0] if kl else None,
                "kl_t16": kl["mean"][15] if kl and len(kl["mean"]) >= 16 else None,
                "lifted": lifted[-1],
                "diluted": diluted[-1],
            }
        )
        notes.append(model)
    v.cells_complete = len(lifted)
    if not lifted:
        return v
    if "no" in lifted or "no" in diluted:
        v.verdict = "does not hold"
    elif all(x == "yes" for x in lifted + diluted):
        v.verdict = "holds"
        v.holds_in = [e["cell"] for e in v.evidence]
    else:
        v.verdict = "inconclusive here"
    v.note = (
        "From the committed mechanism analyses (`rsp analyze`), not from the map's cells: "
        + ", ".join(notes)
        + "; T=0.7, L=4, arithmetic 1 step."
    )
    return v


def dapo_verdict(summary_file: Path | None) -> Verdict:
    """C4 from experiments/dapo_seeds_summary.py's summary.json (see the module docstring)."""
    v = Verdict(
        "C4 gains in DAPO (RSP-DAPO vs DAPO)",
        "not run",
        "held-out pass@1, pass@32",
        f"t interval over {DAPO_SEEDS} seeds",
        0,
        DAPO_SEEDS,
    )
    if summary_file is None or not summary_file.is_file():
        v.note = "No summary of `bash experiments/dapo_seeds.sh` (python experiments/dapo_seeds_summary.py)."
        return v
    per_seed = json.loads(summary_file.read_text())["per_seed"]
    v.cells_complete = len(per_seed)
    v.note = f"From {summary_file}: {len(per_seed)} of {DAPO_SEEDS} seeds complete."
    if len(per_seed) < DAPO_SEEDS:
        return v
    level = 1 - FAMILY_ALPHA / len(DAPO_METRICS)
    for name, key in DAPO_METRICS.items():
        est = t_interval([r["paired"][key]["mean"] for r in per_seed.values()], confidence=level)
        cell = f"{name}, {len(per_seed)} seeds"
        v.evidence.append({"cell": cell, "mean": est.mean, "low": est.low, "high": est.high, "level": level})
    return _apply_family_rule(v)


def all_verdicts(
    results: list[CellResult], analysis_files: list[Path], dapo_summary: Path | None = None
) -> list[Verdict]:
    base = [
        r for r in results if r.cell.axis in ("difficulty", "temperature") and r.cell.reference.is_baseline
    ]
    widened = [r for r in base if _is_default_rsp(r) and r.cell.treatment.temperature > 0]
    greedy = [r for r in base if _is_default_rsp(r) and r.cell.treatment.temperature == 0]
    soft = [r for r in results if r.cell.axis == "direct" and r.cell.reference.method == "soft-prompt"]
    controls = [r for r in results if r.cell.axis == "direct" and r.cell.reference.method in CONTROLS]
    out = [
        entropy_verdict(analysis_files),
        family_verdict("C2 Pass@N widened together with temperature", widened, "pass@32"),
        equivalence_verdict("C3 comparable to trained soft prompts", soft, "pass@32"),
        dapo_verdict(dapo_summary),
        family_verdict("D1 RSP raises per-attempt accuracy (pass@1) at T > 0", widened, "pass@1"),
        family_verdict("D2 RSP widens greedy decoding (pass@32 at T = 0)", greedy, "pass@32"),
        family_verdict(
            "D3 fresh Gaussian vectors beat the controls (RSP minus control, pass@32)", controls, "pass@32"
        ),
    ]
    return out
