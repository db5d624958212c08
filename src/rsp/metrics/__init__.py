"""Metrics: pass@k, maj@k, confidence intervals, paired comparisons."""

from rsp.metrics.passk import maj_at_k, pass_at_k, pass_at_k_curve
from rsp.metrics.stats import Estimate, PairedComparison, bootstrap_ci, paired_comparison

__all__ = [
    "Estimate",
    "PairedComparison",
    "bootstrap_ci",
    "maj_at_k",
    "paired_comparison",
    "pass_at_k",
    "pass_at_k_curve",
]
