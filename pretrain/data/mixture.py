"""A deterministic weighted interleave of example sources, by global example index.

A component is one endless example source (e.g. one shard of a token store);
several stores mix by weight. Global index i belongs to run j = i // R (R =
run_length), runs to periods of P runs: period q = j // P, position p = j % P.
Each period holds component k exactly c_k times (the largest-remainder share of
P by weight, at least once), in an order drawn from default_rng([seed, q]).
Component k's local run is q * c_k + (earlier positions of period q holding k),
so each component reads its local indices 0, 1, 2, ... in order, and any global
index maps in O(1) from (weights, seed, R, P) alone: no state, no replay, the
same on any process count, and a resumed run continues exactly.
"""

import collections
import ctypes
import ctypes.util
import math
import threading
from typing import Callable, Sequence

import numpy as np

from pretrain.data.pipeline import ExampleSource
from pretrain.errors import PretrainError

_CACHED_PERIODS = 4  # A batch spans one or two periods; reader threads may sit on neighbours.


def _malloc_trim() -> Callable[[], None]:
  """glibc's malloc_trim, or a no-op elsewhere.

  Building a shard's plans makes large temporaries; glibc keeps freed ones in its heap once its mmap
  threshold has grown. Trimmed at each eviction, a bert_tiny stream over 16 shards of 64 MB text stays
  at ~257 MB resident instead of ~300 MB (120 batches of 256, shards switching every batch).
  """
  name = ctypes.util.find_library("c")
  try:
    trim = ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):
    trim = None
  return (lambda: trim(0)) if trim else (lambda: None)


_TRIM = _malloc_trim()


def _check_weights(weights: Sequence[float], names: Sequence[str] | None = None) -> np.ndarray:
  weights = list(weights)
  if not weights:
    raise PretrainError("a mixture needs at least one weight")
  out = []
  for k, w in enumerate(weights):
    label = f"mixture weight {k}" + (f" ({names[k]})" if names is not None else "")
    try:
      v = float(w)
    except (TypeError, ValueError):
      v = math.nan
    if isinstance(w, bool) or not math.isfinite(v) or v <= 0:
      raise PretrainError(f"{label} is {w!r}: weights must be positive numbers")
    out.append(v)
  return np.asarray(out, np.float64)


def _check_int(value, what: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise PretrainError(f"mixture {what} is {value!r}: it must be an integer >= {minimum}")
  return int(value)


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
  """int64 [C] summing to `total`: floor(total * share), the rest to the largest remainders
  (ties to the lower index); then every zero takes one from the largest count."""
  quota = total * weights / weights.sum()
  counts = np.floor(quota).astype(np.int64)
  extra = total - int(counts.sum())
  remainder = np.round(quota - counts, 9)  # So 614.4 and 102.4 tie despite float noise.
  order = np.lexsort((np.arange(len(quota)), -remainder))
  counts[order[:extra]] += 1
  for k in np.flatnonzero(counts == 0):
    counts[np.argmax(counts)] -= 1
    counts[k] = 1
  return counts


class Mixture:
  """Maps global example indices to (component, local index); pure numpy, stateless, thread-safe."""

  def __init__(
    self, weights: Sequence[float], seed: int, run_length: int = 1, period: int | None = None
  ):
    self.weights = _check_weights(weights)
    self.num_components = len(self.weights)
    self.seed = _check_int(seed, "seed", 0)
    self.run_length = _check_int(run_length, "run_length", 1)
    if period is None:
      period = max(1024, 16 * self.num_components)
    self.period = _check_int(period, "period (runs)", self.num_components)
    self.runs_per_period = largest_remainder(self.weights, self.period)
    self._multiset = np.repeat(np.arange(self.num_components, dtype=np.int64), self.runs_per_period)
    self._starts = np.cumsum(self.runs_per_period) - self.runs_per_period
    self._lock = threading.Lock()
    self._periods = collections.OrderedDict()

  def _period(self, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(component [P], rank [P]) of period q: rank = earlier positions holding the same component."""
    with self._lock:
      if q in self._periods:
        self._periods.move_to_end(q)
        return self._periods[q]
    comp = np.random.default_rng([self.seed, q]).permutation(self._multiset)
    order = np.argsort(comp, kind="stable")
    rank = np.empty(self.period, np.int64)
    rank[order] = np.arange(self.period, dtype=np.int64) - self._starts[comp[order]]
    with self._lock:
      self._periods[q] = (comp, rank)
      while len(self._periods) > _CACHED_PERIODS:
        self._periods.popitem(last=False)
    return comp, rank

  def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """(component int64 [B], local index int64 [B]) of each global index."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
      raise PretrainError(f"mixture index {int(idx.min())} is negative")
    if self.num_components == 1:
      return np.zeros_like(idx), idx.copy()
    runs, offset = np.divmod(idx, self.run_length)
    q, p = np.divmod(runs, self.period)
    comp, rank = np.empty_like(idx), np.empty_like(idx)
    periods = np.unique(q) if idx.size and q.min() != q.max() else q[:1]
    for period in periods:
      sel = q == period if len(periods) > 1 else slice(None)
      table, ranks = self._period(int(period))
      comp[sel], rank[sel] = table[p[sel]], ranks[p[sel]]
    local_run = q * self.runs_per_period[comp] + rank
    return comp, local_run * self.run_length + offset

  def counts(self, n: int) -> np.ndarray:
    """int64 [C]: how many of the global indices 0 .. n-1 each component got (O(C + P))."""
    n = _check_int(n, "count", 0)
    runs, rem = divmod(n, self.run_length)
    q, p = divmod(runs, self.period)
    out = q * self.runs_per_period * self.run_length
    if p or rem:
      table, _ = self._period(q)
      out = out + self.run_length * np.bincount(table[:p], minlength=self.num_components)
      if rem:
        out[table[p]] += rem
    return out.astype(np.int64)


class MixtureSource:
  """An ExampleSource over lazily built components mixed by weight (see the module doc).

  Keeps at most `max_open` built components (least recently used go first) and
  calls each needed component's batch once per batch. `names` (default "0",
  "1", ...) may repeat: shards of one store share its name and `drawn` sums them.
  """

  def __init__(
    self,
    builders: Sequence[Callable[[], ExampleSource]],
    weights: Sequence[float],
    *,
    seed: int,
    run_length: int,
    names: Sequence[str] | None = None,
    max_open: int = 4,
  ):
    self._builders = list(builders)
    weights = list(weights)
    if not self._builders:
      raise PretrainError("a mixture needs at least one component")
    if len(weights) != len(self._builders):
      raise PretrainError(
        f"a mixture of {len(self._builders)} components got {len(weights)} weights"
      )
    if names is None:
      names = [str(k) for k in range(len(self._builders))]
    self.names = [str(x) for x in names]
    if len(self.names) != len(self._builders):
      raise PretrainError(
        f"a mixture of {len(self._builders)} components got {len(self.names)} names"
      )
    _check_weights(weights, self.names)
    self.mixture = Mixture(weights, seed, run_length)
    self.max_open = _check_int(max_open, "max_open", 1)
    self._lock = threading.Lock()
    self._open = collections.OrderedDict()
    self._build_locks = {}

  def _component(self, k: int) -> ExampleSource:
    with self._lock:
      if k in self._open:
        self._open.move_to_end(k)
        return self._open[k]
      build_lock = self._build_locks.setdefault(k, threading.Lock())
    with build_lock:  # One build per component at a time; other components build meanwhile.
      with self._lock:
        if k in self._open:
          self._open.move_to_end(k)
          return self._open[k]
      component = self._builders[k]()
      with self._lock:
        self._open[k] = component
        evicted = len(self._open) > self.max_open
        while len(self._open) > self.max_open:
          self._open.popitem(last=False)
        if evicted:
          _TRIM()  # Return the evicted shard's memory to the system.
      return component

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    comp, local = self.mixture.locate(indices)
    order = np.argsort(comp, kind="stable")
    ks, starts = np.unique(comp[order], return_index=True)
    groups = np.split(order, starts[1:])
    if len(ks) <= 1:  # The common case: no copy.
      return self._component(int(ks[0]) if len(ks) else 0).batch(local)
    out = None
    for k, rows in zip(ks, groups):
      part = self._component(int(k)).batch(local[rows])
      if out is None:
        out = {
          key: np.empty((len(comp),) + np.shape(v)[1:], np.asarray(v).dtype)
          for key, v in part.items()
        }
        first = int(k)
      if set(part) != set(out):
        raise PretrainError(
          f"mixture components {first} and {int(k)} return different fields: "
          f"{sorted(out)} vs {sorted(part)}"
        )
      for key, v in part.items():
        v, have = np.asarray(v), out[key]
        if v.shape[:1] != (len(rows),):
          raise PretrainError(
            f"mixture component {int(k)} returns {v.shape[:1]} rows of {key!r} "
            f"for {len(rows)} indices"
          )
        if v.shape[1:] != have.shape[1:] or v.dtype != have.dtype:
          raise PretrainError(
            f"mixture components {first} and {int(k)} return {key!r} as {have.dtype} rows of "
            f"{have.shape[1:]} vs {v.dtype} rows of {v.shape[1:]}"
          )
        have[rows] = v
    return out

  def drawn(self, n: int) -> dict[str, int]:
    """Examples each named component got among global indices [0, n), names summed."""
    out = {}
    for name, c in zip(self.names, self.mixture.counts(n)):
      out[name] = out.get(name, 0) + int(c)
    return out
