"""Epochs: global index -> (epoch, slot), per-epoch plans made on demand, the last two cached."""

import numpy as np
import pytest

from pretrain.data.epochs import Epochs
from pretrain.errors import PretrainError


def _counting(n=5):
  made = []

  def plan(epoch):
    made.append(epoch)
    return ("plan", epoch)

  return Epochs(n, plan), made


def test_index_reads_epoch_and_slot():
  epochs, _ = _counting(5)
  epoch, slot = epochs.locate(
    np.array([[0, 4], [5, 12], [23, 5_000_000_007]])
  )  # Any shape, flattened.
  np.testing.assert_array_equal(epoch, [0, 0, 1, 2, 4, 1_000_000_001])
  np.testing.assert_array_equal(slot, [0, 4, 0, 2, 3, 2])
  assert epoch.dtype == slot.dtype == np.int64
  assert epochs.num_per_epoch == 5


def test_groups_split_a_batch_by_epoch_in_order():
  epochs, made = _counting(5)
  groups = epochs.groups([12, 3, 4, 5, 6, 0, 11])  # Spans the 0 | 1 boundary, and epoch 2.
  assert [g.epoch for g in groups] == [0, 1, 2]
  np.testing.assert_array_equal(groups[0].rows, [1, 2, 5])
  np.testing.assert_array_equal(groups[0].slots, [3, 4, 0])
  np.testing.assert_array_equal(groups[1].rows, [3, 4])
  np.testing.assert_array_equal(groups[1].slots, [0, 1])
  np.testing.assert_array_equal(groups[2].rows, [0, 6])
  np.testing.assert_array_equal(groups[2].slots, [2, 1])
  assert [g.plan for g in groups] == [("plan", 0), ("plan", 1), ("plan", 2)]
  assert made == [0, 1, 2]
  assert epochs.groups(np.zeros([0], np.int64)) == []


def test_the_last_two_epochs_are_cached():
  epochs, made = _counting(5)
  for e in (0, 1, 0, 1, 1):
    assert epochs.plan(e) == ("plan", e)
  assert made == [0, 1]
  epochs.plan(2)  # Evicts 0, the least recently used.
  epochs.plan(1)
  assert made == [0, 1, 2]
  epochs.plan(0)  # Made again; evicts 2.
  epochs.plan(1)
  epochs.plan(2)
  assert made == [0, 1, 2, 0, 2]
  epochs.groups([7, 12])  # Epochs 1 and 2: both cached.
  assert made == [0, 1, 2, 0, 2]
  epochs.groups([2, 7])  # Epochs 0 (made, evicting 1) and 1 (made, evicting 2).
  assert made == [0, 1, 2, 0, 2, 0, 1]
  epochs.plan(0)
  assert made == [0, 1, 2, 0, 2, 0, 1]


def test_a_given_first_plan_is_not_made_again():
  made = []
  epochs = Epochs(3, lambda e: made.append(e) or e * 10, first="zero")
  assert epochs.plan(0) == "zero" and epochs.groups([4])[0].plan == 10
  assert made == [1]


def test_negative_indices_and_empty_epochs_are_errors():
  epochs, made = _counting(5)
  with pytest.raises(IndexError, match=r"example indices must be >= 0, got -3"):
    epochs.groups([4, -3, -1])
  with pytest.raises(IndexError, match=r"example indices must be >= 0, got -1"):
    epochs.locate(-1)
  assert made == []
  with pytest.raises(PretrainError, match="num_per_epoch=0"):
    Epochs(0, lambda e: e)


def test_a_builder_that_passes_its_own_method_is_no_reference_cycle():
  """Dropped, a builder (and the plans it holds) is freed at once, without waiting for the cyclic gc."""
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top

  class Builder:
    def __init__(self):
      self.epochs = Epochs(3, self.plan)

    def plan(self, epoch):
      return np.arange(3) + epoch

  gc.disable()
  try:
    b = Builder()
    assert b.epochs.plan(2).tolist() == [2, 3, 4]
    ref = weakref.ref(b)
    del b
    assert ref() is None
  finally:
    gc.enable()
