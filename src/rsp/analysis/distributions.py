"""Per-position distribution metrics and across-attempt branching/diversity measures: the entropy
given *one* injection (a property of one forward pass) is kept apart from the spread of what N attempts
with N injections produced (distinct prefixes, divergence points, distinct-n).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import torch


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax of logits / temperature (0 is treated as 1: greedy has no spread to measure)."""
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits.float() / t, dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension."""
    return -(logp.exp() * logp).sum(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats over the last dimension."""
    return (logp.exp() * (logp - logq)).sum(-1)


def distinct_prefixes(sequences: Sequence[Sequence[int]], k: int) -> list[int]:
    """Number of distinct first-t-token prefixes among the attempts, for t = 1..k."""
    return [len({tuple(s[:t]) for s in sequences}) for t in range(1, k + 1)]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """1-based position of the first differing token (len+1 if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i + 1
    return min(len(a), len(b)) + 1


def mean_first_divergence(sequences: Sequence[Sequence[int]]) -> float:
    pairs = list(combinations(range(len(sequences)), 2))
    if not pairs:
        return float("nan")
    return sum(first_divergence(sequences[i], sequences[j]) for i, j in pairs) / len(pairs)


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over the attempts (model tokens)."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def bleu(hypothesis: Sequence[int], references: Sequence[Sequence[int]], max_n: int = 4) -> float:
    """Sentence BLEU-4; add-one smoothing on the 2..4-gram precisions (Lin & Och 2004), none on unigrams,
    so attempts sharing no token score 0."""
    if not hypothesis or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        max_ref: Counter = Counter()
        for ref in references:
            for gram, c in Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)).items():
                max_ref[gram] = max(max_ref[gram], c)
        overlap = sum(min(c, max_ref[g]) for g, c in hyp.items())
        total = sum(hyp.values())
        if n == 1:
            if overlap == 0:
                return 0.0
            log_p += math.log(overlap / total) / max_n
        else:
            log_p += math.log((overlap + 1) / (total + 1)) / max_n
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    bp = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / max(len(hypothesis), 1))
    return bp * math.exp(log_p)


def self_bleu(sequences: Sequence[Sequence[int]]) -> float:
    """Mean BLEU of each attempt against the others (higher = less diverse)."""
    if len(sequences) < 2:
        return float("nan")
    return sum(
        bleu(s, [o for j, o in enumerate(sequences) if j != i]) for i, s in enumerate(sequences)
    ) / len(sequences)
