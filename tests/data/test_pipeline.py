"""The grain batch stream: deterministic, resumable, sharded by process, elastic."""

import numpy as np

from pretrain.data.pipeline import BatchStream, fixed_batches


class IndexSource:
  """Each example is its own global index, so batches show exactly which examples they hold."""

  def batch(self, indices):
    return {"index": np.asarray(indices, np.int64), "square": np.asarray(indices, np.int64) ** 2}


def take(stream, n):
  return [next(stream)["index"] for _ in range(n)]


def test_batches_are_consecutive_global_examples():
  s = BatchStream(IndexSource(), 4, num_threads=2)
  np.testing.assert_array_equal(np.concatenate(take(s, 3)), np.arange(12))


def test_processes_split_each_global_batch():
  whole = take(BatchStream(IndexSource(), 8), 3)
  parts = [
    take(BatchStream(IndexSource(), 8, process_index=p, process_count=2), 3) for p in range(2)
  ]
  for b in range(3):
    np.testing.assert_array_equal(np.concatenate([parts[0][b], parts[1][b]]), whole[b])


def test_state_restores_exactly():
  a = BatchStream(IndexSource(), 4)
  take(a, 5)
  state = a.get_state()
  expected = take(a, 3)
  b = BatchStream(IndexSource(), 4)
  b.set_state(state)
  for x, y in zip(take(b, 3), expected):
    np.testing.assert_array_equal(x, y)


def test_resume_with_other_process_count_and_batch_size_skips_and_repeats_nothing():
  first = BatchStream(IndexSource(), 8, process_index=0, process_count=2)
  take(first, 3)  # 24 examples consumed globally.
  state = first.get_state()
  # One process, same batch size: continues at example 24.
  one = BatchStream(IndexSource(), 8)
  one.set_state(state)
  np.testing.assert_array_equal(take(one, 1)[0], np.arange(24, 32))
  # A batch size that does not divide 24: still continues at example 24.
  other = BatchStream(IndexSource(), 5)
  other.set_state(state)
  np.testing.assert_array_equal(np.concatenate(take(other, 2)), np.arange(24, 34))
  resumed = other.get_state()
  again = BatchStream(IndexSource(), 8)
  again.set_state(resumed)
  np.testing.assert_array_equal(take(again, 1)[0], np.arange(34, 42))


def test_fixed_batches_repeat_and_shard():
  a = fixed_batches(IndexSource(), 4, 2)
  b = fixed_batches(IndexSource(), 4, 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["index"], y["index"])
  half = fixed_batches(IndexSource(), 4, 2, process_index=1, process_count=2)
  np.testing.assert_array_equal(half[1]["index"], [6, 7])
