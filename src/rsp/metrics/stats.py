"""Confidence intervals over problems and paired comparisons between methods."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}


def bootstrap_ci(values, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of per-problem values with a percentile bootstrap CI (resampling problems)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Estimate(mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


@dataclass(frozen=True)
class PairedComparison:
    difference: Estimate  # mean of (a - b) over problems, with bootstrap CI
    p_value: float  # two-sided paired sign-flip permutation test
    n_problems: int
    wins: int  # problems where a > b
    losses: int

    def to_dict(self) -> dict:
        return {
            **self.difference.to_dict(),
            "p_value": self.p_value,
            "n_problems": self.n_problems,
            "wins": self.wins,
            "losses": self.losses,
        }


def paired_comparison(
    a, b, *, confidence: float = 0.95, n_boot: int = 2000, n_perm: int = 10000, seed: int = 0
) -> PairedComparison:
    """Compare two methods on the same problems (a[i] and b[i] are per-problem scores)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired comparison needs equal-length inputs, got {xa.shape} and {xb.shape}")
    d = xa - xb
    est = bootstrap_ci(d, confidence=confidence, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 1)
    observed = abs(d.mean())
    if np.allclose(d, 0):
        p = 1.0
    else:
        signs = rng.choice([-1.0, 1.0], size=(n_perm, d.size))
        p = float((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).mean())
    return PairedComparison(est, p, int(d.size), int((d > 0).sum()), int((d < 0).sum()))
