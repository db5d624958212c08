"""pass@k against exact enumeration, maj@k on hand cases, CIs and paired comparisons."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsp.metrics import (
    bootstrap_ci,
    maj_at_k,
    paired_comparison,
    pass_at_k,
    pass_at_k_curve,
    t_interval,
    t_quantile,
)


def _exact_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n attempts (c correct) containing at least one correct one, by enumeration."""
    attempts = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(attempts[i] for i in s) for s in subsets) / len(subsets)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_enumeration(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(_exact_pass_at_k(n, c, k), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_closed_form(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-9)


def test_pass_at_k_edges_and_monotone():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)
    curve = pass_at_k_curve(16, 3)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(curve))
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_maj_at_k_hand_cases():
    # the correct answer "5" is the clear majority
    assert maj_at_k(["5", "5", "5", "3"], [True, True, True, False], 4) == 1.0
    # wrong majority
    assert maj_at_k(["3", "3", "5"], [False, False, True], 3) == 0.0
    # a tie between one right and one wrong class scores 1/2
    assert maj_at_k(["5", "3"], [True, False], 2) == 0.5
    # k=1 is mean accuracy
    assert maj_at_k(["5", "3", "3", "7"], [True, False, False, False], 1) == pytest.approx(0.25)
    # missing answers never win
    assert maj_at_k([None, None, "5"], [False, False, True], 3) == 1.0
    # subsets of size 2 from [5,5,3]: {5,5}->1, {5,3}->0.5 twice => (1+0.5+0.5)/3
    assert maj_at_k(["5", "5", "3"], [True, True, False], 2) == pytest.approx(2 / 3)


def test_maj_at_k_monte_carlo_is_seeded_and_close_to_exact():
    answers = ["1", "2", "1", "3", "1", "2", "4", "1"] * 3
    correct = [a == "1" for a in answers]
    exact = maj_at_k(answers, correct, 5, max_subsets=10**6)
    mc = maj_at_k(answers, correct, 5, max_subsets=3000, seed=1)
    assert mc == maj_at_k(answers, correct, 5, max_subsets=3000, seed=1)
    assert mc == pytest.approx(exact, abs=0.03)


def test_bootstrap_ci_brackets_mean_and_shrinks_with_n():
    small = bootstrap_ci([0, 1] * 5)
    large = bootstrap_ci([0, 1] * 500)
    assert small.low <= small.mean <= small.high
    assert (large.high - large.low) < (small.high - small.low)
    assert bootstrap_ci([0.5]).low == 0.5


def test_paired_comparison_detects_consistent_difference():
    a = [0.6, 0.7, 0.8, 0.5, 0.9, 0.7, 0.6, 0.8, 0.7, 0.6]
    b = [x - 0.2 for x in a]
    res = paired_comparison(a, b)
    assert res.difference.mean == pytest.approx(0.2)
    assert res.difference.low > 0 and res.p_value < 0.01 and res.wins == 10
    same = paired_comparison(a, a)
    assert same.p_value == 1.0 and same.difference.mean == 0
    with pytest.raises(ValueError):
        paired_comparison([1, 2], [1])


@pytest.mark.parametrize(
    ("confidence", "df", "expected"),  # printed Student-t tables, two-sided
    [
        (0.95, 1, 12.706),
        (0.95, 2, 4.303),
        (0.95, 5, 2.571),
        (0.95, 30, 2.042),
        (0.975, 2, 6.205),
        (0.99, 4, 4.604),
    ],
)
def test_t_quantile_matches_printed_tables(confidence, df, expected):
    assert t_quantile(confidence, df) == pytest.approx(expected, abs=1e-3)


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    est = t_interval([1.0, 2.0, 6.0])
    half = 4.303 * math.sqrt(7.0) / math.sqrt(3)  # sample sd of (1, 2, 6) is sqrt(7)
    assert est.mean == pytest.approx(3.0)
    assert (est.low, est.high) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-3)
    assert t_interval([1.0, 2.0, 6.0], confidence=0.99).high > est.high
    with pytest.raises(ValueError, match="at least two"):
        t_interval([1.0])
