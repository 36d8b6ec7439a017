"""Standard errors, intervals and the paired tests against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evsys_core import stats
from evsys_core.benchmarks.passk import per_task_values


def passes(n: int, k: int) -> dict[str, list[float]]:
    """n tasks t000.., the first k passed (1.0), the rest failed (0.0); one score each."""
    return {f"t{i:03d}": [1.0 if i < k else 0.0] for i in range(n)}


def test_stderr_of_a_known_vector():
    mean, se = stats.mean_stderr([1, 2, 3, 4])
    # sd (ddof 1) = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3); / sqrt(4)
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    mean, se = stats.mean_stderr([1] * 8 + [0] * 3)          # 8 of 11 tasks passed
    assert se == pytest.approx(math.sqrt(8 / 11 * 3 / 11 * 11 / 10 / 11))   # 0.14084
    assert math.isnan(stats.mean_stderr([0.5])[1])          # one task: no spread to measure
    with pytest.raises(ValueError):
        stats.mean_stderr([])


def test_pass_at_k_stderr_is_over_the_per_task_estimates():
    per_task = [[(1.0, True)] * 2 + [(0.0, False)] * 2,     # c=2 of 4: pass@2 = 1 - 1/6
                [(0.0, False)] * 4,                         # 0
                [(1.0, True)] * 4]                          # 1
    row = stats.with_uncertainty("val/b/", per_task_values(["pass@2"], per_task))
    est = [5 / 6, 0.0, 1.0]
    mean = sum(est) / 3                                     # 11/18
    sd = math.sqrt(sum((e - mean) ** 2 for e in est) / 2)
    assert row == {"val/b/pass@2": pytest.approx(11 / 18),
                   "val/b/pass@2_stderr": pytest.approx(sd / math.sqrt(3)),   # 0.3093
                   "val/b/n_tasks": 3}


def test_format_score_and_metrics():
    mean, se = stats.mean_stderr([1] * 8 + [0] * 3)
    assert stats.format_score(mean, se, 11) == "0.727 ± 0.276 (95% CI, 11 tasks)"  # 1.96 * 0.1408
    assert stats.format_score(1.0, math.nan, 1) == "1.000 (1 task)"
    assert stats.format_score(0.5) == "0.500"
    shown = stats.format_metrics({"val/v/pass@1": mean, "val/v/pass@1_stderr": se,
                                  "val/v/n_tasks": 11, "train/mean_loss": 1.23456})
    assert shown == {"val/v/pass@1": "0.727 ± 0.276 (95% CI, 11 tasks)", "train/mean_loss": "1.235"}
    assert stats.ci95(0.5, 0.1) == pytest.approx((0.5 - 0.196, 0.5 + 0.196), abs=1e-4)


def test_exact_mcnemar_hand_computed():
    assert stats.exact_mcnemar(1, 6) == pytest.approx(2 * (1 + 7) / 2 ** 7)   # 0.125
    assert stats.exact_mcnemar(0, 6) == pytest.approx(2 / 2 ** 6)             # 0.03125
    assert stats.exact_mcnemar(3, 3) == 1.0 and stats.exact_mcnemar(0, 0) == 1.0
    # beyond 2000 discordant pairs: z = (|b - c| - 1) / sqrt(b + c), p = erfc(z / sqrt 2)
    assert stats.exact_mcnemar(1100, 1000) == pytest.approx(math.erfc(99 / math.sqrt(2 * 2100)))
    big = stats.paired_compare({f"t{i}": [float(i < 2000)] for i in range(5000)},
                               {f"t{i}": [float(1000 <= i < 4000)] for i in range(5000)})
    assert big.test == "mcnemar, normal approximation" and big.verdict == "better"


def test_half_to_three_quarters_on_300_tasks_is_better_and_swapping_flips_it():
    base, cand = passes(300, 150), passes(300, 225)          # 75 tasks turn from fail to pass
    p = stats.paired_compare(base, cand)
    assert (p.base, p.cand, p.delta, p.n_tasks) == (0.5, 0.75, 0.25, 300)
    assert p.test == "mcnemar exact" and p.p_value == pytest.approx(2 / 2 ** 75)
    sd = math.sqrt(0.25 * 0.75 * 300 / 299)                 # of the 0/1 differences
    assert (p.ci_low, p.ci_high) == pytest.approx((0.25 - 1.959964 * sd / math.sqrt(300),
                                                   0.25 + 1.959964 * sd / math.sqrt(300)))
    assert p.verdict == "better"
    back = stats.paired_compare(cand, base)
    assert back.verdict == "worse" and back.delta == -0.25 and back.p_value == p.p_value


def test_eight_to_nine_of_eleven_differing_on_one_task_is_inconclusive():
    p = stats.paired_compare(passes(11, 8), passes(11, 9))
    assert p.delta == pytest.approx(1 / 11) and p.p_value == 1.0   # b=0, c=1: 2 * 1/2
    assert p.verdict == "inconclusive" and p.n_tasks == 11


def test_sign_flip_exact_hand_computed_and_seeded_draws_repeat():
    # |sum| of the 8 sign patterns of (0.5, 0.25, 0.25): 1, .5, .5, 0, 0, .5, .5, 1
    assert stats.sign_flip_p([0.5, 0.25, 0.25, 0.0]) == (0.25, "sign-flip exact")
    assert stats.sign_flip_p([0.0, 0.0]) == (1.0, "sign-flip exact")
    diffs = [0.3 if i % 4 else -0.1 for i in range(40)]      # 40 non-zero: random draws
    p1, kind = stats.sign_flip_p(diffs, seed=0)
    assert kind == "sign-flip, 20000 seeded draws" and p1 == stats.sign_flip_p(diffs, seed=0)[0]
    assert p1 == pytest.approx(1 / 20001)                   # no flip reaches the observed sum
    many = [0.5] * 1500 + [-0.5] * 1000                      # 2500: the normal approximation
    assert stats.sign_flip_p(many) == (pytest.approx(math.erfc(250 / math.sqrt(2 * 625))),
                                       "sign-flip, normal approximation")
    noisy = [(-1) ** i * 0.2 + 0.01 for i in range(40)]
    a, b = stats.sign_flip_p(noisy, seed=0)[0], stats.sign_flip_p(noisy, seed=1)[0]
    assert 0.5 < a <= 1 and 0.5 < b <= 1 and a != b          # the seed is what fixes the answer


def test_continuous_scores_and_pooled_replicates_use_the_sign_flip_test():
    base = {f"t{i}": [0.25] for i in range(20)}
    cand = {f"t{i}": [0.5] for i in range(20)}               # pass@k-style estimates
    p = stats.paired_compare(base, cand)
    assert p.test.startswith("sign-flip") and p.verdict == "better"
    # three replicates per side: a task's value is the mean of its list
    base3 = {f"t{i}": [1.0, 0.0, 0.0] for i in range(12)}
    cand3 = {f"t{i}": [1.0, 1.0, 0.0] for i in range(12)}
    p3 = stats.paired_compare(base3, cand3)
    assert p3.base == pytest.approx(1 / 3) and p3.cand == pytest.approx(2 / 3)
    assert p3.test == "sign-flip exact" and p3.p_value == pytest.approx(2 / 2 ** 12)
    assert p3.verdict == "better" and p3 == stats.paired_compare(base3, cand3)


def test_only_shared_tasks_are_paired():
    base = passes(10, 5) | {"extra": [1.0]}
    p = stats.paired_compare(base, passes(10, 5))
    assert (p.n_tasks, p.base_only, p.cand_only, p.delta) == (10, 1, 0, 0.0)
    assert p.verdict == "inconclusive"
    with pytest.raises(ValueError, match="share no task_id"):
        stats.paired_compare({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(ValueError, match="no scores"):
        stats.paired_compare({"a": []}, {"a": [1.0]})
