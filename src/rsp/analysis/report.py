"""Plots and a one-page Markdown report for `rsp analyze` results."""

from __future__ import annotations

from pathlib import Path

from rsp.reporting import pyplot
from rsp.runio import atomic_write_text

# metric -> (plot title, file, what the plot asks)
CURVES = {
    "entropy": (
        "Next-token entropy given one injection (nats)",
        "entropy_by_position.png",
        "Does the first tokens' distribution flatten with an injection, "
        "and does it return to the plain level later?",
    ),
    "kl": (
        "KL(injected || plain) on the plain trajectory (nats)",
        "kl_by_position.png",
        "How far the injection moves the next-token distribution on the same prefix, "
        "by position (the 'dilution' claim predicts decay).",
    ),
    "attention": (
        "Attention share on injected slots (plain: last L prompt tokens)",
        "attention_by_position.png",
        "How much attention generated positions pay to the injected vectors, "
        "compared with ordinary prompt tokens at the same place.",
    ),
    "distinct_prefixes": (
        "Distinct first-t-token prefixes across attempts",
        "distinct_prefixes.png",
        "Branching across the N attempts: how many different prefixes exist after t tokens.",
    ),
}
# the per-problem numbers of the diversity table (after distinct-1..4), and how each is printed
SCALAR_FORMATS = {"self_bleu": ".3f", "first_divergence": ".2f", "distinct_answers": ".2f", "length": ".1f"}
HEATMAP_CAPTION = "Which layers carry the attention to the injected columns, and how it changes with t."


def _curve_plot(result: dict, metric: str, title: str, path: Path) -> bool:
    curves = {m: metrics[metric] for m, metrics in result["metrics"].items() if metric in metrics}
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for m, v in curves.items():
        xs = list(range(1, len(v["mean"]) + 1))
        ax.plot(xs, v["mean"], marker="o", ms=2.5, label=m)
        ax.fill_between(xs, v["ci_low"], v["ci_high"], alpha=0.2)
    ax.set_xlabel("generated position t")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if metric == "attention":
        ax.set_yscale("log")
    fig.text(0.01, 0.01, f"{result['problems']} problems; bands: 95% bootstrap CI over problems", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _heatmap(result: dict, method: str, path: Path) -> bool:
    layers = result["metrics"][method].get("attention_by_layer")
    if not layers:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    im = ax.imshow(layers["mean"], aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("generated position t (index t-1)")
    ax.set_ylabel("layer")
    sliding = [i for i, t in enumerate(result.get("layer_types") or []) if t == "sliding_attention"]
    title = f"{method}: attention share on injected columns by layer and position"
    if sliding:
        title += f"\nsliding-window layers (window {result.get('sliding_window')}): {sliding}"
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _at(v: dict, t: int) -> str:
    if len(v["mean"]) < t:
        return "n/a"
    return f"{v['mean'][t - 1]:.3g} [{v['ci_low'][t - 1]:.3g}, {v['ci_high'][t - 1]:.3g}]"


def headline_table(result: dict) -> str:
    k = result["k"]
    pos = [t for t in (1, 2, 3, 4, 8, 16, 32) if t <= k]
    lines = [
        "| method | metric | " + " | ".join(f"t={t}" for t in pos) + " |",
        "|---|---|" + "---|" * len(pos),
    ]
    for m, metrics in result["metrics"].items():
        for name in ("entropy", "kl", "attention", "top1"):
            if name in metrics:
                lines.append(f"| {m} | {name} | " + " | ".join(_at(metrics[name], t) for t in pos) + " |")
    lines += [
        "",
        "| method | distinct-1 | distinct-2 | distinct-3 | distinct-4 | self-BLEU | first divergence (token) "
        "| distinct answers | length (tokens) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, metrics in result["metrics"].items():
        cells = [f"{x:.3f}" for x in metrics["distinct_n"]["mean"]]
        cells += [f"{metrics[name]['mean'][0]:{fmt}}" for name, fmt in SCALAR_FORMATS.items()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEFINITIONS = """\
Definitions (all per generated position t = 1..K, t being the position whose token the model is predicting):

- **entropy**: Shannon entropy (nats) of the model's next-token distribution at the sampling temperature,
  from raw logits, on each attempt's own trajectory *given its own single injection*; averaged over
  attempts, then over problems. This is the conditional entropy, not the spread across draws.
- **kl**: KL(p_injected || p_plain) in nats, both scored teacher-forced on the *same* trajectory: the
  plain (no-injection) attempt with the same index, once with this attempt's injection and once without.
- **attention**: share of attention (softmax weights, averaged over heads and layers) that the query
  producing token t puts on the injected slot keys; for methods without injection, on the same number
  of ordinary prompt tokens just before the insertion point. One teacher-forced eager pass per batch.
- **distinct prefixes**: number of distinct first-t-token prefixes among a problem's N attempts (the
  empirical spread across injection draws and sampling). **first divergence**: mean over attempt pairs
  of the first position where they differ. **distinct-n**: unique / total n-grams of model tokens pooled
  over the attempts. **self-BLEU**: mean BLEU-4 (add-one smoothing) of each attempt against the others.
- CIs: 95% percentile bootstrap over problems.
"""


def write_report(result: dict, out: Path, command: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    parts = [
        f"# Mechanism analysis: {cfg['model']} on {cfg['task']}",
        "",
        f"{result['problems']} problems x {cfg['n']} attempts per method; "
        f"methods {', '.join(result['methods'])}; "
        f"RSP L={cfg['rsp_length']} at `{cfg.get('rsp_position', cfg.get('position'))}`, "
        f"scale {cfg['rsp_scale']}; sampling temperature "
        f"{cfg['temperature']}; K={result['k']} positions.",
        "",
    ]
    if command:
        parts += ["Command:", "", "```bash", command, "```", ""]
    if result.get("sliding_window"):
        sliding = [i for i, t in enumerate(result["layer_types"]) if t == "sliding_attention"]
        parts += [
            f"Note: layers {sliding} use sliding-window attention "
            f"(window {result['sliding_window']} tokens): "
            "they stop seeing the injected slots once the context grows past the window.",
            "",
        ]
    parts += ["## Headline numbers", "", "Mean [95% CI] at selected positions.", ""]
    parts += [headline_table(result), "", "## Plots", ""]
    for metric, (title, fname, caption) in CURVES.items():
        if _curve_plot(result, metric, title, out / fname):
            parts += [f"### {title}", "", f"![{metric}]({fname})", "", caption, ""]
    for m in result["methods"]:
        fname = f"attention_heatmap_{m}.png"
        if _heatmap(result, m, out / fname):
            heading = f"### Attention by layer and position: {m}"
            parts += [heading, "", f"![heatmap {m}]({fname})", "", HEATMAP_CAPTION, ""]
    parts += ["## Definitions", "", DEFINITIONS]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
