"""GLUE's metrics on whole dev splits, in numpy: accuracy, F1, Matthews correlation, Pearson, Spearman.

They are GLUE's (and scikit-learn's / scipy's) definitions: F1 of the positive
class (label 1) for MRPC and QQP, Matthews correlation of binary labels for CoLA,
Pearson and Spearman (average ranks for ties) for STS-B. A constant prediction
has no correlation: 0, as scikit-learn's matthews_corrcoef gives.
"""

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> float:
  """F1 of class `positive`: 2 TP / (2 TP + FP + FN); 0 when there is no positive anywhere."""
  y, p = np.asarray(labels) == positive, np.asarray(predictions) == positive
  tp = np.sum(y & p)
  denominator = 2 * tp + np.sum(~y & p) + np.sum(y & ~p)
  return float(2 * tp / denominator) if denominator else 0.0


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Matthews correlation (multi-class, Gorodkin's R_K; for two classes the phi coefficient)."""
  y, p = np.asarray(labels), np.asarray(predictions)
  classes = np.union1d(y, p)
  confusion = np.zeros([classes.size, classes.size], np.float64)
  np.add.at(confusion, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1)
  t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # True and predicted counts per class.
  n, correct = confusion.sum(), np.trace(confusion)
  denominator = np.sqrt((n * n - q @ q) * (n * n - t @ t))
  return float((correct * n - t @ q) / denominator) if denominator else 0.0


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
  y, p = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
  y, p = y - y.mean(), p - p.mean()
  denominator = np.sqrt((y @ y) * (p @ p))
  return float(y @ p / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks from 1, ties taking their average rank (scipy.stats.rankdata's 'average')."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], x.size]
  average = (starts + ends + 1) / 2.0  # Mean of ranks start+1 .. end.
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(average, ends - starts)
  return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
  return pearson(_ranks(labels), _ranks(predictions))


METRICS = {
  "accuracy": accuracy,
  "f1": f1,
  "matthews": matthews,
  "pearson": pearson,
  "spearman": spearman,
}


def compute(names, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
  """{name: value} of the metrics `names` (keys of METRICS)."""
  return {name: METRICS[name](labels, predictions) for name in names}
