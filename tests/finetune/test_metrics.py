"""GLUE's metrics against scipy's on fixed inputs (Matthews correlation of binary labels is their Pearson
correlation, F1 the harmonic mean of precision and recall)."""

import numpy as np
import pytest
from scipy import stats

from pretrain.finetune import metrics

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 200)
NOISY = np.where(RNG.random(200) < 0.3, 1 - LABELS, LABELS)  # 70% agree.
SCORES = RNG.normal(size=150)
# Many ties, as STS-B's scores have (multiples of 0.2).
TIED = np.round(SCORES * 5 + RNG.normal(size=150)) / 5


def test_accuracy_and_f1():
  assert metrics.accuracy(LABELS, NOISY) == pytest.approx(np.mean(LABELS == NOISY))
  tp = np.sum((LABELS == 1) & (NOISY == 1))
  precision, recall = tp / np.sum(NOISY == 1), tp / np.sum(LABELS == 1)
  assert metrics.f1(LABELS, NOISY) == pytest.approx(stats.hmean([precision, recall]), abs=1e-12)
  assert metrics.f1([0, 0], [0, 0]) == 0.0  # No positive anywhere.
  assert metrics.f1([1, 0, 1, 1], [1, 1, 0, 1]) == pytest.approx(2 / 3)


def test_matthews_is_the_phi_coefficient():
  phi = stats.pearsonr(LABELS.astype(float), NOISY.astype(float)).statistic
  assert metrics.matthews(LABELS, NOISY) == pytest.approx(phi, abs=1e-12)
  assert metrics.matthews(LABELS, LABELS) == pytest.approx(1.0)
  assert metrics.matthews(LABELS, 1 - LABELS) == pytest.approx(-1.0)
  assert metrics.matthews(LABELS, np.ones_like(LABELS)) == 0.0  # Constant prediction.
  # Three classes: Gorodkin's R_K; confusion [[2,1,0],[0,2,1],[1,0,3]] worked out by hand.
  y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
  p = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
  c, s = 7, 10
  t, q = np.array([3, 3, 4]), np.array([3, 3, 4])
  expected = (c * s - t @ q) / np.sqrt((s * s - q @ q) * (s * s - t @ t))
  assert metrics.matthews(y, p) == pytest.approx(expected)


@pytest.mark.parametrize("predictions", [SCORES + RNG.normal(size=150), TIED])
def test_pearson_and_spearman_against_scipy(predictions):
  assert metrics.pearson(SCORES, predictions) == pytest.approx(
    stats.pearsonr(SCORES, predictions).statistic, abs=1e-12
  )
  assert metrics.spearman(TIED, predictions) == pytest.approx(
    stats.spearmanr(TIED, predictions).statistic, abs=1e-12
  )
  assert metrics.pearson(SCORES, np.zeros(150)) == 0.0


def test_compute_names_every_metric():
  out = metrics.compute(("f1", "accuracy"), LABELS, NOISY)
  assert set(out) == {"f1", "accuracy"}
