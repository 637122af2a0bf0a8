"""Statistics over seeds: mean, standard deviation and a t confidence interval per variant, and a paired
test of each variant against the baseline (seed k of one against seed k of the other) with a verdict.

Pairing by seed removes what the seed shares across variants (the data order,
and the init where shapes agree), so the test sees the variant's own effect.
"""

import dataclasses
import math
import warnings

import numpy as np
from scipy import stats as scipy_stats

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
NO_TEST = "no test possible"
BASELINE = "baseline"


@dataclasses.dataclass(frozen=True)
class Summary:
  """A metric over a variant's seeds; sd and the interval are NaN for one seed."""

  n: int
  mean: float
  sd: float
  ci_low: float
  ci_high: float


def t_interval(values, confidence: float) -> tuple[float, float]:
  """The two-sided `confidence` interval of the mean, Student's t with n - 1 degrees of freedom."""
  x = np.asarray(values, float)
  if len(x) < 2:
    return math.nan, math.nan
  half = scipy_stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
  return float(x.mean() - half), float(x.mean() + half)


def summarize(values, confidence: float = 0.95) -> Summary:
  """Mean, sample standard deviation (ddof 1) and t interval of the finite values."""
  x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
  if not len(x):
    return Summary(0, math.nan, math.nan, math.nan, math.nan)
  low, high = t_interval(x, confidence)
  return Summary(
    len(x), float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, low, high
  )


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A variant against the baseline over the seeds both finished."""

  n: int  # Paired seeds.
  diff: float  # Mean of variant - baseline.
  diff_ci_low: float
  diff_ci_high: float
  p_value: float  # NaN when no test is possible.
  verdict: str


def paired_p_value(values, baseline, test: str) -> float:
  """Two-sided p-value of paired samples having equal means (t: ttest_rel, wilcoxon: signed-rank test)."""
  x, y = np.asarray(values, float), np.asarray(baseline, float)
  if np.array_equal(x, y):
    return 1.0  # Identical results: nothing to detect (both scipy tests are undefined here).
  with warnings.catch_warnings():  # Near-constant differences: scipy warns, the p-value stands.
    warnings.simplefilter("ignore", RuntimeWarning)
    if test == "wilcoxon":
      return float(scipy_stats.wilcoxon(x, y).pvalue)
    return float(scipy_stats.ttest_rel(x, y).pvalue)


def compare(
  values: dict[int, float],
  baseline: dict[int, float],
  *,
  higher_is_better: bool,
  alpha: float,
  test: str = "t",
  confidence: float = 0.95,
) -> Comparison:
  """Paired comparison of {seed: value} against the baseline's {seed: value}."""
  seeds = sorted(
    s
    for s in set(values) & set(baseline)
    if all(v is not None and math.isfinite(v) for v in (values[s], baseline[s]))
  )
  x = np.asarray([values[s] for s in seeds], float)
  y = np.asarray([baseline[s] for s in seeds], float)
  d = x - y
  if len(d) < 2:
    diff = float(d.mean()) if len(d) else math.nan
    return Comparison(len(d), diff, math.nan, math.nan, math.nan, NO_TEST)
  low, high = t_interval(d, confidence)
  p = paired_p_value(x, y, test)
  return Comparison(
    len(d), float(d.mean()), low, high, p, verdict(d.mean(), p, alpha, higher_is_better)
  )


def verdict(diff: float, p: float, alpha: float, higher_is_better: bool) -> str:
  if not math.isfinite(p):
    return NO_TEST
  if p >= alpha or diff == 0:
    return NO_DIFFERENCE
  return BETTER if (diff > 0) == higher_is_better else WORSE


def holm(comparisons: dict[str, Comparison], alpha: float, higher_is_better: bool):
  """The comparisons with Holm-Bonferroni adjusted p-values and their verdicts (family-wise alpha)."""
  tested = sorted((c.p_value, name) for name, c in comparisons.items() if math.isfinite(c.p_value))
  m, running, out = len(tested), 0.0, dict(comparisons)
  for rank, (p, name) in enumerate(tested):
    running = max(running, min(1.0, (m - rank) * p))  # Step-down, kept monotone.
    c = comparisons[name]
    out[name] = dataclasses.replace(
      c, p_value=running, verdict=verdict(c.diff, running, alpha, higher_is_better)
    )
  return out


def minimum_p_value(n: int, test: str) -> float:
  """The smallest two-sided p-value the test can reach with n paired seeds (the signed-rank test's is
  2 / 2^n: with 4 seeds or fewer it can never reach 0.05)."""
  if n < 2:
    return math.nan
  return 2.0 / 2**n if test == "wilcoxon" else 0.0
