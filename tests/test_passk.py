"""pass@k against hand-computed values, metric parsing and aggregation."""

from __future__ import annotations

import math

import pytest

from evsys_core.benchmarks.passk import (METRIC_PATTERN, parse_metric, pass_at_k, per_task_values,
                                         samples_needed, sampling_defaults)


@pytest.mark.parametrize("n, c, k, want", [
    (5, 2, 1, 0.4),          # c/n
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 0, 1, 0.0),
    (5, 0, 5, 0.0),
    (5, 5, 1, 1.0),
    (5, 4, 2, 1.0),          # n - c = 1 < k: every draw of 2 holds a pass
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
    (4, 1, 4, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_matches_binomials_and_stays_stable_for_large_n():
    for n, c, k in [(20, 7, 3), (50, 1, 10), (100, 60, 8)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    # C(2000, 1000) overflows a float; the product form does not
    value = pass_at_k(2000, 3, 1000)
    assert 0.0 < value <= 1.0 and value == pytest.approx(1 - 0.5 ** 3, abs=1e-3)


def test_pass_at_k_increases_with_k():
    values = [pass_at_k(16, 3, k) for k in range(1, 17)]   # 1.0 from k = 14 = n - c + 1
    assert values == sorted(values) and values[-1] == 1.0


@pytest.mark.parametrize("n, c, k, words", [
    (3, 1, 4, "num_samples >= 4"),
    (3, 4, 1, "0 <= c <= n"),
    (0, 0, 1, "n >= 1"),
    (3, 1, 0, "k >= 1"),
])
def test_pass_at_k_rejects_bad_counts(n, c, k, words):
    with pytest.raises(ValueError, match=words):
        pass_at_k(n, c, k)


def test_parse_metric():
    assert parse_metric("pass@1") == ("pass", 1)
    assert parse_metric("pass@16") == ("pass", 16)
    assert parse_metric("mean_score") == ("mean_score", None)


@pytest.mark.parametrize("bad, hint", [
    ("pass_4", "pass@4"), ("Pass@ 2", "pass@2"), ("mean", "mean_score"),
    ("accuracy", None), ("pass@0", None), ("pass@", None),
])
def test_parse_metric_errors_say_what_is_supported(bad, hint):
    with pytest.raises(ValueError) as e:
        parse_metric(bad)
    assert "pass@" in str(e.value) and "mean_score" in str(e.value) or "k must be" in str(e.value)
    if hint:
        assert f"did you mean {hint!r}" in str(e.value)


def test_samples_needed():
    assert samples_needed(["pass@1"]) == 1
    assert samples_needed(["pass@1", "pass@8", "mean_score"]) == 8
    assert samples_needed(["mean_score"]) == 1


def test_per_task_values_one_per_task():
    per_task = [
        [(1.0, True), (0.0, False), (1.0, True), (0.0, False)],   # c=2 of 4
        [(0.5, False), (0.5, False), (0.5, False), (0.5, False)],  # partial credit, no pass
    ]
    out = per_task_values(["pass@1", "pass@2", "mean_score"], per_task)
    assert out["pass@1"] == pytest.approx([0.5, 0.0])
    assert out["pass@2"] == pytest.approx([1 - 1 / 6, 0.0])   # 1 - C(2,2)/C(4,2)
    assert out["mean_score"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        per_task_values(["pass@1"], [])


def test_sampling_defaults_are_the_one_rule():
    assert sampling_defaults(["pass@4", "pass@1"]) == (4, 1.0, 64)
    assert sampling_defaults(["mean_score"]) == (1, 0.0, 64)
    assert sampling_defaults(["pass@1"], 3, None, 16) == (3, 1.0, 16)
    assert sampling_defaults(["pass@1"], None, 0.7) == (1, 0.7, 64)
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples per task but "
                                         "num_samples is 2; raise num_samples to 8"):
        sampling_defaults(["pass@1", "pass@8"], 2)


@pytest.mark.parametrize("name", ["pass@1", "pass@16", "mean_score", "pass@01", "pass@0",
                                  "pass@", "mean", "pass@1 "])
def test_schema_pattern_accepts_what_parse_metric_accepts(name):
    import re

    try:
        parse_metric(name)
        parsed = name.strip() == name
    except ValueError:
        parsed = False
    assert bool(re.fullmatch(METRIC_PATTERN, name)) == parsed
