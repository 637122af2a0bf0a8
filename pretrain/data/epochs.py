"""Global example index -> (epoch, slot), with each epoch's plan made on demand.

Every example builder reads global index i as slot i % N of epoch i // N, N
examples per epoch, through a plan (chunks, blocks, a permutation...) drawn per
epoch. Plans are cached for the last few epochs: neighbouring indices share an
epoch and a batch near a boundary spans two, so two suffice.
"""

import collections
import inspect
import threading
import weakref
from typing import Callable, Generic, NamedTuple, TypeVar

import numpy as np

from pretrain.errors import PretrainError

Plan = TypeVar("Plan")
CACHED_EPOCHS = 2


class Group(NamedTuple, Generic[Plan]):
  """The rows of a batch that read one epoch."""

  epoch: int
  rows: np.ndarray  # int64 [k]: their places in the batch, ascending.
  slots: np.ndarray  # int64 [k]: their slots in the epoch, in [0, N).
  plan: Plan


class Epochs(Generic[Plan]):
  """`plan(epoch)` for the epochs a batch reads, thread-safe, the last `cached` epochs kept."""

  def __init__(
    self,
    num_per_epoch: int,
    plan: Callable[[int], Plan],
    *,
    cached: int = CACHED_EPOCHS,
    first: Plan | None = None,
  ):
    """`first`: epoch 0's plan when the caller has made it already (e.g. to learn N from it)."""
    if num_per_epoch < 1:
      raise PretrainError(f"an epoch needs >= 1 example, got num_per_epoch={num_per_epoch}")
    self.num_per_epoch = int(num_per_epoch)
    # A builder passes its own method: held weakly, so the builder is no reference cycle and its
    # arrays (a shard's plans) are freed the moment a mixture drops it, not at some later gc pass.
    self._make = weakref.WeakMethod(plan) if inspect.ismethod(plan) else (lambda: plan)
    self._cached = int(cached)
    self._lock = threading.Lock()
    self._plans = collections.OrderedDict()
    if first is not None:
      self._plans[0] = first

  def plan(self, epoch: int) -> Plan:
    """The epoch's plan, made at most once while it stays among the last `cached` used."""
    with self._lock:  # Held while planning, so threads never plan one epoch twice.
      if epoch in self._plans:
        self._plans.move_to_end(epoch)
      else:
        self._plans[epoch] = self._make()(epoch)
        while len(self._plans) > self._cached:
          self._plans.popitem(last=False)
      return self._plans[epoch]

  def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """(epoch int64 [B], slot int64 [B]) of global indices (any shape, flattened); all must be >= 0."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
      raise IndexError(f"example indices must be >= 0, got {int(idx.min())}")
    return np.divmod(idx, self.num_per_epoch)

  def groups(self, indices) -> list[Group[Plan]]:
    """The batch `indices` split by epoch, epochs ascending; each group with its epoch's plan."""
    epoch, slot = self.locate(indices)
    out = []
    for e in np.unique(epoch).tolist():
      rows = np.flatnonzero(epoch == e)
      out.append(Group(e, rows, slot[rows], self.plan(e)))
    return out
