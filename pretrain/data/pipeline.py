"""The grain pipeline: global example indices -> this process's rows of each batch.

Global batch b holds the examples `offset + b * G ... offset + (b + 1) * G - 1`
of a random-access example source (G = global batch size). Process p of P
builds only rows `p * G/P ... (p + 1) * G/P - 1`, in grain reader threads off
the training thread. The iterator's state is the next batch index plus the
offset, so a run resumed with another process count, or even another batch
size, continues at the same global example: nothing is repeated or skipped.
"""

from typing import Any, Protocol

import grain
import numpy as np

from pretrain.errors import PretrainError

_ENDLESS = 10**15  # grain wants a length; no run gets near it.


class ExampleSource(Protocol):
  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class BatchStream:
  """An endless, deterministic, resumable iterator over this process's batch rows."""

  def __init__(
    self,
    source: ExampleSource,
    global_batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch_batches: int = 4,
    example_offset: int = 0,
  ):
    if global_batch_size % process_count:
      raise PretrainError(
        f"batch size {global_batch_size} does not split over {process_count} processes"
      )
    self.source = source
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.example_offset = int(example_offset)
    self._options = grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_batches
    )
    self._start(0)

  def _rows(self, batch_index: int) -> np.ndarray:
    first = (
      self.example_offset
      + batch_index * self.global_batch_size
      + self.process_index * self.local_batch_size
    )
    return np.arange(first, first + self.local_batch_size, dtype=np.int64)

  def _start(self, next_batch: int):
    ds = grain.MapDataset.range(_ENDLESS).map(lambda b: self.source.batch(self._rows(int(b))))
    self._iter = iter(ds.to_iter_dataset(self._options))
    if next_batch:
      self._iter.set_state({"next_index": int(next_batch)})

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iter)

  def get_state(self) -> dict[str, Any]:
    return {
      "example_offset": self.example_offset,
      "next_batch": int(self._iter.get_state()["next_index"]),
      "global_batch_size": self.global_batch_size,
    }

  def examples_consumed(self) -> int:
    """Global examples handed out so far (every process's rows of every batch returned)."""
    return self.example_offset + int(self._iter.get_state()["next_index"]) * self.global_batch_size

  def set_state(self, state: dict[str, Any]):
    """Continues at the global example where `state` stopped, whatever the batch size was."""
    consumed = int(state["example_offset"]) + int(state["next_batch"]) * int(
      state["global_batch_size"]
    )
    if consumed % self.global_batch_size == 0:
      self.example_offset, next_batch = 0, consumed // self.global_batch_size
    else:
      self.example_offset, next_batch = consumed, 0
    self._start(next_batch)


def fixed_batches(
  source: ExampleSource,
  global_batch_size: int,
  num_batches: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """The same eval batches on every call (this process's rows of each)."""
  local = global_batch_size // process_count
  out = []
  for b in range(num_batches):
    first = b * global_batch_size + process_index * local
    out.append(source.batch(np.arange(first, first + local, dtype=np.int64)))
  return out
