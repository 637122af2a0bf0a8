"""Statistics over seeds: intervals and paired tests as scipy computes them, and verdicts that flip where
the evidence does."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pretrain.ablate import stats

BASELINE = {0: 2.50, 1: 2.61, 2: 2.47, 3: 2.55}
VARIANT = {0: 2.44, 1: 2.57, 2: 2.45, 3: 2.49}  # Lower by 0.02 to 0.06 on every seed.


def test_summary_is_mean_sample_sd_and_t_interval():
  s = stats.summarize(BASELINE.values())
  x = np.array(list(BASELINE.values()))
  assert (s.n, s.mean, s.sd) == (4, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
  low, high = scipy_stats.t.interval(0.95, 3, loc=x.mean(), scale=scipy_stats.sem(x))
  assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
  one = stats.summarize([2.5, None, math.nan])  # Unfinished seeds do not count.
  assert one.n == 1 and one.mean == 2.5 and math.isnan(one.sd) and math.isnan(one.ci_low)


@pytest.mark.parametrize("test", ["t", "wilcoxon"])
def test_paired_comparison_matches_scipy(test):
  c = stats.compare(VARIANT, BASELINE, higher_is_better=False, alpha=0.05, test=test)
  x, y = (np.array([d[k] for k in range(4)]) for d in (VARIANT, BASELINE))
  expected = (scipy_stats.ttest_rel if test == "t" else scipy_stats.wilcoxon)(x, y).pvalue
  assert c.n == 4 and c.p_value == pytest.approx(expected)
  assert c.diff == pytest.approx((x - y).mean())
  low, high = scipy_stats.t.interval(0.95, 3, loc=(x - y).mean(), scale=scipy_stats.sem(x - y))
  assert (c.diff_ci_low, c.diff_ci_high) == (pytest.approx(low), pytest.approx(high))


def test_verdict_flips_with_direction_alpha_and_noise():
  loss = stats.compare(VARIANT, BASELINE, higher_is_better=False, alpha=0.05)
  assert loss.p_value < 0.05 and loss.verdict == stats.BETTER
  # The same numbers as an accuracy (higher is better): worse.
  assert stats.compare(VARIANT, BASELINE, higher_is_better=True, alpha=0.05).verdict == stats.WORSE
  # A stricter alpha than the p-value: no longer significant.
  strict = stats.compare(VARIANT, BASELINE, higher_is_better=False, alpha=loss.p_value / 2)
  assert strict.verdict == stats.NO_DIFFERENCE
  # One seed going the other way: the mean is still lower, but not significantly.
  noisy = {**VARIANT, 1: BASELINE[1] + 0.1}
  c = stats.compare(noisy, BASELINE, higher_is_better=False, alpha=0.05)
  assert c.diff < 0 and c.p_value > 0.05 and c.verdict == stats.NO_DIFFERENCE
  same = stats.compare(BASELINE, BASELINE, higher_is_better=False, alpha=0.05)
  assert same.p_value == 1.0 and same.verdict == stats.NO_DIFFERENCE


def test_one_seed_or_unpaired_seeds_give_no_test():
  c = stats.compare({0: 2.4}, {0: 2.5}, higher_is_better=False, alpha=0.05)
  assert c.n == 1 and math.isnan(c.p_value) and c.verdict == stats.NO_TEST
  assert c.diff == pytest.approx(-0.1)
  # Only seeds both finished pair up: seed 1 of the variant has no partner.
  c = stats.compare({0: 2.4, 1: 2.3}, {0: 2.5, 2: 2.6}, higher_is_better=False, alpha=0.05)
  assert c.n == 1 and c.verdict == stats.NO_TEST


def test_holm_adjusts_step_down_and_can_flip_a_verdict():
  c = {
    name: stats.Comparison(4, -0.05, -0.1, 0.0, p, stats.BETTER)
    for name, p in (("a", 0.01), ("b", 0.04), ("c", 0.03))
  }
  adjusted = stats.holm(c, 0.05, higher_is_better=False)
  assert adjusted["a"].p_value == pytest.approx(0.03) and adjusted["a"].verdict == stats.BETTER
  assert (
    adjusted["c"].p_value == pytest.approx(0.06) and adjusted["c"].verdict == stats.NO_DIFFERENCE
  )
  assert adjusted["b"].p_value == pytest.approx(0.06)  # max(0.06, 1 x 0.04): kept monotone.


def test_signed_rank_floor_with_few_seeds():
  assert (
    stats.minimum_p_value(3, "wilcoxon") == 0.25 and stats.minimum_p_value(6, "wilcoxon") < 0.05
  )
  assert stats.minimum_p_value(3, "t") == 0.0 and math.isnan(stats.minimum_p_value(1, "t"))
