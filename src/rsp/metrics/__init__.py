"""Metrics: pass@k, maj@k, intervals (bootstrap over problems, t over seeds), paired comparisons."""

from rsp.metrics.passk import maj_at_k, pass_at_k, pass_at_k_curve
from rsp.metrics.stats import (
    Estimate,
    PairedComparison,
    bootstrap_ci,
    paired_comparison,
    t_interval,
    t_quantile,
)

__all__ = [
    "Estimate",
    "PairedComparison",
    "bootstrap_ci",
    "maj_at_k",
    "paired_comparison",
    "pass_at_k",
    "pass_at_k_curve",
    "t_interval",
    "t_quantile",
]
