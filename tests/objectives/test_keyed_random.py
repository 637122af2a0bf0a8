"""Keyed randomness: uniform bits per (row key, column), popcount, binomial(n, 1/2) counts."""

import numpy as np

from pretrain.objectives import keyed_random


def test_primitives():
  keys = keyed_random.row_keys(0, np.arange(4000))
  u = keyed_random.uniform(keyed_random.bits(keys, np.arange(8)))
  assert u.shape == (4000, 8) and u.min() >= 0 and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05
  x = keyed_random.bits(keys[:3], np.arange(3))
  assert (keyed_random.popcount(x) == [[bin(int(v)).count("1") for v in r] for r in x]).all()
  for n in (10, 100):  # One and two 64-trial words.
    k = keyed_random.binomial_half(keys, np.full(4000, n), 50)
    assert k.min() >= 0 and k.max() <= n
    assert abs(k.mean() - n / 2) < 0.1 * np.sqrt(n) and abs(k.var() / (n / 4) - 1) < 0.1
  assert (keyed_random.binomial_half(keys, np.zeros(4000, np.int64), 0) == 0).all()
