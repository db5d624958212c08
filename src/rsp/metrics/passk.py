"""Unbiased pass@k (Chen et al. 2021) and maj@k from n attempts per problem."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k attempts drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) as a product, stable for large n
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_curve(n: int, c: int) -> list[float]:
    return [pass_at_k(n, c, k) for k in range(1, n + 1)]


def _majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Score of a majority vote: ties split evenly between the tied classes; None answers never win."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [a for a, cnt in counts.items() if cnt == top]
    truth = {a: ok for a, ok in zip(answers, correct, strict=True) if a is not None}
    return sum(truth[w] for w in winners) / len(winners)


def maj_at_k(
    answers: Sequence[str | None], correct: Sequence[bool], k: int, *, max_subsets: int = 2000, seed: int = 0
) -> float:
    """Expected majority-vote accuracy over k-subsets of the n attempts (`answers` canonical, so equivalent
    answers share a string; ties count as the fraction of tied classes that are right). Exact when
    C(n, k) <= max_subsets, else a seeded Monte-Carlo estimate.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError("answers and correct must have the same length")
    if not 1 <= k <= n:
        raise ValueError(f"maj@{k} needs 1 <= k <= n = {n}")
    if math.comb(n, k) <= max_subsets:
        subsets: list[tuple[int, ...]] = list(itertools.combinations(range(n), k))
    else:
        rng = random.Random(seed)
        subsets = [tuple(rng.sample(range(n), k)) for _ in range(max_subsets)]
    total = 0.0
    for idx in subsets:
        total += _majority_correct([answers[i] for i in idx], [correct[i] for i in idx])
    return total / len(subsets)
