"""The weighted interleave of example sources: runs, in-order streams, shares, resume, lazy components."""

import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pretrain.data.mixture import largest_remainder, Mixture, MixtureSource
from pretrain.data.pipeline import BatchStream
from pretrain.errors import PretrainError

REPO = pathlib.Path(__file__).resolve().parents[2]
RANDOM_WEIGHTS = tuple(np.random.default_rng(0).uniform(0.05, 1.0, 5).round(4))
CONFIGS = [  # (weights, run_length, period)
  ((1, 1), 1, None),
  ((0.6, 0.3, 0.1), 4, 20),
  ((0.6, 0.3, 0.1), 1, None),
  (RANDOM_WEIGHTS, 3, 64),
  ((1000, 1, 1), 2, 8),
]


class Fake:
  """Component k: example l is x = l * 10 + k and y = [l, k] as float32, so rows show where they came from."""

  def __init__(self, k: int):
    self.k = k
    self.calls = []

  def batch(self, indices):
    idx = np.asarray(indices, np.int64)
    self.calls.append(idx.copy())
    return {
      "x": idx * 10 + self.k,
      "y": np.stack([idx, np.full_like(idx, self.k)], 1).astype(np.float32),
    }


def builders(n, built=None):
  def build(k):
    if built is not None:
      built.append(k)
    return Fake(k)

  return [lambda k=k: build(k) for k in range(n)]


@pytest.mark.parametrize("weights,run_length,period", CONFIGS)
def test_runs_of_global_indices_share_a_component_and_read_contiguous_locals(
  weights, run_length, period
):
  m = Mixture(weights, seed=7, run_length=run_length, period=period)
  n = run_length * 3000
  comp, local = m.locate(np.arange(n))
  runs_c, runs_l = comp.reshape(-1, run_length), local.reshape(-1, run_length)
  assert (runs_c == runs_c[:, :1]).all()
  np.testing.assert_array_equal(
    runs_l - runs_l[:, :1], np.broadcast_to(np.arange(run_length), runs_l.shape)
  )
  assert (runs_l[:, 0] % run_length == 0).all()


@pytest.mark.parametrize("weights,run_length,period", CONFIGS)
def test_each_component_reads_its_stream_in_order(weights, run_length, period):
  m = Mixture(weights, seed=11, run_length=run_length, period=period)
  n = (
    run_length * m.period * 5 + 3 * run_length + 1
  )  # Whole periods, then a partial one and a partial run.
  comp, local = m.locate(np.arange(n))
  for k in range(len(weights)):
    mine = local[comp == k]
    np.testing.assert_array_equal(mine, np.arange(len(mine)))
  # Index by index (unordered, scattered batches) gives the same mapping.
  perm = np.random.default_rng(0).permutation(n)
  c2, l2 = m.locate(perm)
  np.testing.assert_array_equal(c2, comp[perm])
  np.testing.assert_array_equal(l2, local[perm])


def test_a_single_component_is_the_identity():
  for run_length, period in [(1, None), (7, 3), (128, 1)]:
    m = Mixture([2.5], seed=5, run_length=run_length, period=period)
    idx = np.concatenate([np.arange(5000), np.random.default_rng(1).integers(0, 10**13, 1000)])
    comp, local = m.locate(idx)
    assert comp.dtype == np.int64 and local.dtype == np.int64
    np.testing.assert_array_equal(comp, np.zeros_like(idx))
    np.testing.assert_array_equal(local, idx)
    assert m.counts(12345).tolist() == [12345]
  # And the source hands back the one component's own batch, bit for bit.
  comp = Fake(0)
  src = MixtureSource([lambda: comp], [1.0], seed=3, run_length=16)
  idx = np.arange(1000, 1064)
  got = src.batch(idx)
  want = Fake(0).batch(idx)
  for key in want:
    assert got[key].dtype == want[key].dtype
    np.testing.assert_array_equal(got[key], want[key])


def test_largest_remainder_shares():
  assert largest_remainder(np.array([0.6, 0.3, 0.1]), 10).tolist() == [6, 3, 1]
  assert largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]  # Tie: lower index.
  assert largest_remainder(np.array([1.0, 1.0]), 1024).tolist() == [512, 512]
  assert largest_remainder(np.array([0.6, 0.3, 0.1]), 1024).tolist() == [
    615,
    307,
    102,
  ]  # .4 each: a tie
  assert largest_remainder(np.array([1000.0, 1.0]), 16).tolist() == [
    15,
    1,
  ]  # At least one run each.
  assert largest_remainder(np.array([1000.0, 1.0, 1.0]), 8).tolist() == [6, 1, 1]
  assert Mixture([1, 2, 3], seed=0).period == 1024
  assert Mixture([1] * 100, seed=0).period == 1600
  with pytest.raises(PretrainError, match="period"):
    Mixture([1, 1, 1], seed=0, period=2)


@pytest.mark.parametrize("weights,run_length,period", CONFIGS)
def test_every_whole_period_holds_each_components_share(weights, run_length, period):
  m = Mixture(weights, seed=2, run_length=run_length, period=period)
  assert m.runs_per_period.sum() == m.period and (m.runs_per_period >= 1).all()
  np.testing.assert_array_equal(
    m.runs_per_period, largest_remainder(np.asarray(weights, float), m.period)
  )
  for q in [0, 1, 2, 10**6]:
    first = q * m.period * run_length
    comp, _ = m.locate(np.arange(first, first + m.period * run_length))
    np.testing.assert_array_equal(
      np.bincount(comp, minlength=len(weights)), m.runs_per_period * run_length
    )


@pytest.mark.parametrize("weights", [(1, 1), (0.6, 0.3, 0.1), RANDOM_WEIGHTS])
def test_proportions_over_a_million_draws(weights):
  n = 10**6
  want = np.asarray(weights, float) / np.sum(weights)
  for run_length, tol in [
    (1, 2e-3),
    (8, 1e-2),
  ]:  # Share rounding (1/P) plus at most one partial period.
    m = Mixture(weights, seed=123, run_length=run_length)
    comp, _ = m.locate(np.arange(n))
    got = np.bincount(comp, minlength=len(weights))
    np.testing.assert_array_equal(got, m.counts(n))
    np.testing.assert_allclose(got / n, want, atol=tol)


def test_counts_equal_brute_force_and_are_cheap():
  for weights, run_length, period in CONFIGS:
    m = Mixture(weights, seed=9, run_length=run_length, period=period)
    comp, _ = m.locate(np.arange(20000))
    for n in [0, 1, run_length - 1, run_length, run_length + 1, 999, 12345, 20000]:
      assert m.counts(n).dtype == np.int64
      np.testing.assert_array_equal(m.counts(n), np.bincount(comp[:n], minlength=len(weights)))
  m = Mixture(RANDOM_WEIGHTS, seed=9, run_length=3)
  t = time.perf_counter()
  assert m.counts(10**15 + 17).sum() == 10**15 + 17
  assert time.perf_counter() - t < 1.0


def test_same_parameters_same_mapping_other_seed_other_order():
  idx = np.arange(24 * 1024 * 2)  # 24 whole periods of 1024 runs of 2.
  a = Mixture((0.6, 0.3, 0.1), seed=4, run_length=2).locate(idx)
  b = Mixture((0.6, 0.3, 0.1), seed=4, run_length=2).locate(idx)
  c = Mixture((0.6, 0.3, 0.1), seed=5, run_length=2).locate(idx)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert (a[0] != c[0]).mean() > 0.2
  np.testing.assert_array_equal(np.bincount(a[0]), np.bincount(c[0]))  # Same shares, another order.


def test_another_process_computes_the_same_mapping():
  code = (
    "import numpy as np; from pretrain.data.mixture import Mixture; "
    "c, l = Mixture((0.6, 0.3, 0.1), seed=4, run_length=2).locate(np.arange(10**12, 10**12 + 4096)); "
    "print(','.join(map(str, c.tolist() + l.tolist())))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)},
    cwd=REPO,
  ).stdout
  c, l = Mixture((0.6, 0.3, 0.1), seed=4, run_length=2).locate(np.arange(10**12, 10**12 + 4096))
  assert out.strip() == ",".join(map(str, c.tolist() + l.tolist()))


def test_far_indices_map_in_o_of_b():
  m = Mixture(RANDOM_WEIGHTS, seed=1, run_length=4)
  first = 10**12 - 1000  # A batch across a period boundary.
  t = time.perf_counter()
  comp, local = m.locate(np.arange(first, first + 4096))
  assert time.perf_counter() - t < 1.0
  # Ordered consumption from any start: local = how many earlier global indices went to the same component.
  before = m.counts(first)
  for k in range(len(RANDOM_WEIGHTS)):
    np.testing.assert_array_equal(local[comp == k], before[k] + np.arange((comp == k).sum()))
  spots = np.random.default_rng(3).integers(0, 10**12, 50)
  comp, local = m.locate(spots)
  for i, k, l in zip(spots, comp, local):
    assert m.counts(int(i))[k] == l
  assert len(m._periods) <= 4  # pylint: disable=protected-access  # The period cache stays bounded.


@pytest.mark.parametrize(
  "weights,message",
  [
    ([], "at least one weight"),
    ([1, 1, -1.0], "mixture weight 2 is -1.0: weights must be positive numbers"),
    ([0, 1], "mixture weight 0 is 0: weights must be positive"),
    ([1, float("nan")], "mixture weight 1 is nan"),
    ([1, float("inf")], "mixture weight 1 is inf"),
    ([1, "a"], "mixture weight 1 is 'a'"),
    ([None], "mixture weight 0 is None"),
  ],
)
def test_bad_weights(weights, message):
  with pytest.raises(PretrainError, match=message.replace("(", r"\(")):
    Mixture(weights, seed=0)


def test_bad_arguments():
  for run_length in [0, -3, 1.5]:
    with pytest.raises(PretrainError, match="run_length"):
      Mixture([1, 1], seed=0, run_length=run_length)
  with pytest.raises(PretrainError, match="seed"):
    Mixture([1, 1], seed=-1)
  with pytest.raises(PretrainError, match="negative"):
    Mixture([1, 1], seed=0).locate(np.array([3, -1]))
  with pytest.raises(PretrainError, match=r"mixture weight 1 \(books\) is -2"):
    MixtureSource(builders(2), [1, -2], seed=0, run_length=1, names=["wiki", "books"])
  with pytest.raises(PretrainError, match="2 components got 3 weights"):
    MixtureSource(builders(2), [1, 1, 1], seed=0, run_length=1)
  with pytest.raises(PretrainError, match="2 components got 1 names"):
    MixtureSource(builders(2), [1, 1], seed=0, run_length=1, names=["a"])
  with pytest.raises(PretrainError, match="max_open"):
    MixtureSource(builders(2), [1, 1], seed=0, run_length=1, max_open=0)


def test_batch_rows_are_each_components_own_rows():
  comps = [Fake(k) for k in range(3)]
  src = MixtureSource([lambda c=c: c for c in comps], (0.5, 0.3, 0.2), seed=8, run_length=4)
  idx = np.arange(13, 13 + 64)  # Starts mid-run.
  out = src.batch(idx)
  comp, local = src.mixture.locate(idx)
  assert len(np.unique(comp)) == 3
  assert out["x"].dtype == np.int64 and out["y"].dtype == np.float32 and out["y"].shape == (64, 2)
  np.testing.assert_array_equal(out["x"], local * 10 + comp)
  np.testing.assert_array_equal(out["y"], np.stack([local, comp], 1).astype(np.float32))
  for k, c in enumerate(comps):
    assert len(c.calls) == 1  # One batch call per component per batch ...
    np.testing.assert_array_equal(
      c.calls[0], local[comp == k]
    )  # ... with its rows' locals, in order.
    own = Fake(k).batch(local[comp == k])
    np.testing.assert_array_equal(out["x"][comp == k], own["x"])
    np.testing.assert_array_equal(out["y"][comp == k], own["y"])


def test_lru_eviction_changes_nothing_and_rebuilds_only_on_a_switch():
  weights, g = (0.5, 0.3, 0.2), 24
  built_all, built_one = [], []
  roomy = MixtureSource(builders(3, built_all), weights, seed=6, run_length=4, max_open=3)
  tight = MixtureSource(builders(3, built_one), weights, seed=6, run_length=4, max_open=1)
  switches, open_one = 0, None
  for b in range(40):
    idx = np.arange(b * g, (b + 1) * g)
    a, t = roomy.batch(idx), tight.batch(idx)
    for key in a:
      np.testing.assert_array_equal(a[key], t[key])
    for k in np.unique(roomy.mixture.locate(idx)[0]):  # The components a batch builds, in order.
      switches += k != open_one
      open_one = k
  assert sorted(built_all) == [0, 1, 2]  # Each built once.
  assert (
    len(built_one) == switches
  )  # With room for one, a build exactly when the component changes.
  assert switches < 40 * 3


def test_resuming_mid_mixture_is_exact():
  weights, g, n = RANDOM_WEIGHTS, 32, 32 * 57 + 5  # n is not a batch boundary.

  def source():
    return MixtureSource(builders(5), weights, seed=21, run_length=8, max_open=2)

  used = source()
  for first in range(0, n, g):
    used.batch(np.arange(first, min(first + g, n)))
  for first in [n, n + g, 10**9 + n]:
    idx = np.arange(first, first + g)
    a, b = used.batch(idx), source().batch(idx)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_threads_and_the_batch_stream_see_the_same_rows():
  src = MixtureSource(builders(3), (0.6, 0.3, 0.1), seed=2, run_length=4, max_open=2)
  ref = MixtureSource(builders(3), (0.6, 0.3, 0.1), seed=2, run_length=4, max_open=3)
  results, errors = {}, []

  def work(t):
    try:
      for b in range(t, 64, 8):
        results[b] = src.batch(np.arange(b * 16, (b + 1) * 16))["x"]
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  for b in range(64):
    np.testing.assert_array_equal(results[b], ref.batch(np.arange(b * 16, (b + 1) * 16))["x"])
  stream = BatchStream(src, 16, num_threads=2)
  for b in range(10):
    np.testing.assert_array_equal(next(stream)["x"], results[b])


def test_drawn_sums_by_name_and_equals_brute_force():
  names = ["wiki", "wiki", "books", "wiki"]
  src = MixtureSource(builders(4), (1, 2, 4, 1), seed=3, run_length=5, names=names)
  comp, _ = src.mixture.locate(np.arange(30000))
  for n in [0, 1, 4, 5, 6, 1234, 30000]:
    got = src.drawn(n)
    counts = np.bincount(comp[:n], minlength=4)
    assert got == {"wiki": int(counts[0] + counts[1] + counts[3]), "books": int(counts[2])}
    assert all(isinstance(v, int) for v in got.values())
    assert sum(got.values()) == n
  assert list(MixtureSource(builders(2), (1, 1), seed=0, run_length=1).drawn(10)) == ["0", "1"]


class Odd(Fake):
  def __init__(self, k, change):
    super().__init__(k)
    self.change = change

  def batch(self, indices):
    out = super().batch(indices)
    return self.change(out) if self.k == 1 else out


@pytest.mark.parametrize(
  "change,message",
  [
    (lambda o: {"x": o["x"]}, "return different fields"),
    (lambda o: {"x": o["x"], "y": o["y"][:, :1]}, "return 'y' as float32 rows of"),
    (lambda o: {"x": o["x"].astype(np.int32), "y": o["y"]}, "return 'x' as int64 rows of"),
    (lambda o: {"x": o["x"][:1], "y": o["y"]}, "rows of 'x' for"),
  ],
)
def test_components_that_disagree_are_an_error(change, message):
  src = MixtureSource([lambda k=k: Odd(k, change) for k in range(2)], (1, 1), seed=0, run_length=1)
  with pytest.raises(PretrainError, match=message):
    src.batch(np.arange(64))
