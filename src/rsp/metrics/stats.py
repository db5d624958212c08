"""Confidence intervals over problems and paired comparisons between methods."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

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
        counts = {k: v for k, v in asdict(self).items() if k != "difference"}
        return {**self.difference.to_dict(), **counts}


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


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact finite series)."""
    theta = np.arctan(t / np.sqrt(df))
    c2 = np.cos(theta) ** 2
    if df % 2 == 1:
        term, total = 1.0, 0.0
        for k in range(1, (df - 1) // 2 + 1):  # 1 + (2/3)c^2 + (2*4)/(3*5)c^4 + ... up to c^(df-3)
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        series = np.sin(theta) * np.cos(theta) * total if df > 1 else 0.0
        return float(2 / np.pi * (theta + series))
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):  # 1 + (1/2)c^2 + (1*3)/(2*4)c^4 + ... up to c^(df-2)
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return float(np.sin(theta) * total)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: P(|T| <= q) = confidence, for integer df >= 1."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < confidence < 1, got df={df}, {confidence}")
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, *, confidence: float = 0.95) -> Estimate:
    """Mean with a Student-t interval: for a handful of independent replicates (e.g. training seeds),
    where a bootstrap over 3 values would be meaningless. Needs at least two values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"t_interval needs at least two values, got {x.size}")
    mean = float(x.mean())
    half = t_quantile(confidence, x.size - 1) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return Estimate(mean, mean - half, mean + half)
