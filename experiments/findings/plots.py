"""The map's figures: change against the base model's accuracy, best and worst pass@k curves, L x T heatmaps.

Why these three: the change in pass@k plotted against the base accuracy shows at a glance whether RSP
helps where the model is weak, strong or at the floor (one point per cell per model); the extreme
cells' curves show what a gain or a loss looks like over k; the heatmaps lay out the two settings a
user must choose (L and temperature). Cells that are not run are drawn as missing, never filled in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.findings.analyse import CellResult
from experiments.findings.cells import BASE_L, DEFAULT_POSITION, LENGTHS, MODELS, N_ATTEMPTS, TEMPERATURES

AXIS_COLORS = {
    "difficulty": "tab:blue",
    "temperature": "tab:orange",
    "length": "tab:green",
    "position": "tab:red",
    "scale": "tab:purple",
    "control": "tab:gray",
}
MODEL_MARKERS = {"smollm2": "o", "gemma3": "s"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _vs_baseline(results: list[CellResult]) -> list[CellResult]:
    return [r for r in results if r.problems and r.cell.reference.is_baseline]


def plot_delta_vs_base(results: list[CellResult], path: Path) -> Path:
    """Δ pass@1 / pass@8 / pass@32 (95% paired CI) against the reference's pass@1, a point per cell."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True)
    pts = _vs_baseline(results)
    for ax, metric in zip(axes, ("pass@1", "pass@8", "pass@32"), strict=True):
        for r in pts:
            d = r.delta(metric)
            x = float(r.reference["pass@1"].mean())
            color = AXIS_COLORS.get(r.cell.axis, "black")
            marker = MODEL_MARKERS.get(r.cell.treatment.model.key, "^")
            ax.errorbar(
                x,
                d["mean"],
                yerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]],
                fmt=marker,
                color=color,
                mfc=color if r.complete else "white",
                ms=6,
                capsize=2,
                lw=0.8,
            )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"Δ {metric} (treatment − temperature only)", fontsize=9)
        ax.set_xlabel("temperature-only pass@1 in the cell")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("paired difference, 95% CI")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=a) for a, c in AXIS_COLORS.items()]
    handles += [
        plt.Line2D([], [], color="black", marker=m, ls="", mfc="white", label=k)
        for k, m in MODEL_MARKERS.items()
    ]
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{len(pts)} cells with data (hollow: fewer than all problems finished)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_and_worst(
    results: list[CellResult], metric: str = "pass@32"
) -> tuple[CellResult, CellResult] | None:
    """The cells with the largest and smallest Δmetric (complete cells if any, else any with data)."""
    pts = _vs_baseline(results)
    pool = [r for r in pts if r.complete] or pts
    if not pool:
        return None
    order = sorted(
        pool,
        key=lambda r: (
            float((r.treatment[metric] - r.reference[metric]).mean()),
            float((r.treatment["pass@1"] - r.reference["pass@1"]).mean()),
        ),
    )
    return order[-1], order[0]


def plot_best_worst(results: list[CellResult], path: Path) -> Path | None:
    pair = best_and_worst(results)
    if pair is None:
        return None
    plt = _pyplot()
    panels = list(zip(pair, ("largest Δ pass@32", "smallest Δ pass@32"), strict=True))
    if pair[0] is pair[1]:
        panels = [(pair[0], "the only cell so far")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
    ks = np.arange(1, N_ATTEMPTS + 1)
    for ax, (r, label) in zip(axes[0], panels, strict=True):
        ax.plot(ks, r.curve("treatment"), marker="o", ms=3, label=r.cell.treatment.name)
        ax.plot(ks, r.curve("reference"), "k--", marker="s", ms=3, label=r.cell.reference.name)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("k")
        ax.set_title(
            f"{label}: {r.cell.treatment.model.key} / {r.cell.treatment.difficulty.key} "
            f"({r.problems} problems)",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("pass@k")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_values(results: list[CellResult], model: str, metric: str) -> np.ndarray:
    """Δmetric of RSP (scale 1, default position) over L x T on arithmetic 1 step; NaN where not run."""
    grid = np.full((len(LENGTHS), len(TEMPERATURES)), np.nan)
    for r in _vs_baseline(results):
        t = r.cell.treatment
        if (
            t.model.key != model
            or t.method != "rsp"
            or t.difficulty.key != "arith1"
            or t.scale != 1.0
            or t.position != DEFAULT_POSITION
            or t.length not in LENGTHS
            or t.temperature not in TEMPERATURES
            or (t.dtype != "auto" and t.length == BASE_L)  # L=4 is the bf16 row; the fp32 base pair isn't
        ):
            continue
        grid[LENGTHS.index(t.length), TEMPERATURES.index(t.temperature)] = float(
            (r.treatment[metric] - r.reference[metric]).mean()
        )
    return grid


def plot_heatmaps(results: list[CellResult], path: Path) -> Path:
    plt = _pyplot()
    metrics = ("pass@1", "pass@32")
    fig, axes = plt.subplots(len(MODELS), len(metrics), figsize=(9, 3.4 * len(MODELS)), squeeze=False)
    for i, model in enumerate(MODELS):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            grid = heatmap_values(results, model.key, metric)
            span = max(0.1, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 0.1
            cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
            im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
            ax.set_xticks(range(len(TEMPERATURES)), ["greedy" if t == 0 else f"{t:g}" for t in TEMPERATURES])
            ax.set_yticks(range(len(LENGTHS)), [str(L) for L in LENGTHS])
            ax.set_xlabel("temperature")
            ax.set_ylabel("L")
            ax.set_title(
                f"{model.key}: Δ {metric} vs temperature only (arith 1 step; L≠4 in fp32)", fontsize=9
            )
            for (a, b), v in np.ndenumerate(grid):
                ax.text(
                    b,
                    a,
                    "not run" if not np.isfinite(v) else f"{v:+.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="#666666" if not np.isfinite(v) else "black",
                )
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
