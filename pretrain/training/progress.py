"""Where a run's wall-clock time goes, across restarts: steps, compilation, checkpoints, data waits, evals.

The train loop books time into a Progress, saves it in every checkpoint and
reports goodput (time in steps that reached a checkpoint over all wall time
since the run first started) in its metrics rows, with the compile seconds a
persistent compilation cache saved (pretrain/training/compile_cache.py).
"""

import contextlib
import dataclasses
import json
import time
from typing import Any

from etils import epath

from pretrain import paths


@dataclasses.dataclass
class Progress:
  """What the run has spent its wall-clock time on, carried across restarts in every checkpoint (as
  `to_dict()`), and the current logging interval's steps and data wait (not saved).

  Time goes to `useful` (training steps) when an interval closes, less the
  interval's data wait; checkpoint saves and evals are timed apart (`timed`)
  and start a new interval.
  """

  first_start_time: float
  restarts: int = 0
  useful_seconds: float = 0.0
  compile_seconds: float = 0.0
  checkpoint_seconds: float = 0.0
  data_wait_seconds: float = 0.0
  eval_seconds: float = 0.0
  # Of earlier lives; this life's come from `compile_cache` (a CacheWatch) and are added when saved.
  compile_cache_hits: int = 0
  compile_seconds_saved: float = 0.0
  compile_cache: Any = dataclasses.field(default=None, repr=False)
  interval_start: float = dataclasses.field(default_factory=time.perf_counter, repr=False)
  interval_steps: int = dataclasses.field(default=0, repr=False)
  interval_data_wait: float = dataclasses.field(default=0.0, repr=False)

  _SAVED = (
    "first_start_time",
    "restarts",
    "useful_seconds",
    "compile_seconds",
    "checkpoint_seconds",
    "data_wait_seconds",
    "eval_seconds",
    "compile_cache_hits",
    "compile_seconds_saved",
  )

  @classmethod
  def resumed(cls, saved: dict, first_start_time: float) -> "Progress":
    """The progress of a checkpoint (its saved dict; older ones lack keys), one restart later."""
    progress = cls(
      **dict(
        {"first_start_time": first_start_time},
        **{k: v for k, v in saved.items() if k in cls._SAVED},
      )
    )
    progress.restarts += 1
    return progress

  def to_dict(self) -> dict:
    saved = {k: getattr(self, k) for k in self._SAVED}
    if self.compile_cache is not None:
      saved["compile_cache_hits"] += self.compile_cache.hits
      saved["compile_seconds_saved"] += self.compile_cache.saved_seconds
    return saved

  def step(self, data_wait: float) -> None:
    """One training step, after waiting `data_wait` seconds for its batch."""
    self.interval_steps += 1
    self.interval_data_wait += data_wait

  def close_interval(self) -> tuple[float, int, float]:
    """(seconds, steps, data wait) of the interval so far, booked as useful and data-wait time; the next
    interval starts at `new_interval`."""
    elapsed = time.perf_counter() - self.interval_start
    self.useful_seconds += elapsed - self.interval_data_wait
    self.data_wait_seconds += self.interval_data_wait
    return elapsed, self.interval_steps, self.interval_data_wait

  def new_interval(self) -> None:
    self.interval_start, self.interval_steps, self.interval_data_wait = time.perf_counter(), 0, 0.0

  @contextlib.contextmanager
  def timed(self, kind: str):
    """Books the time inside to `<kind>_seconds` (checkpoint, eval), not to the steps around it."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.interval_start = time.perf_counter()
      setattr(
        self, f"{kind}_seconds", getattr(self, f"{kind}_seconds") + self.interval_start - start
      )

  def goodput_row(self) -> dict:
    """Goodput: time in training steps that reached a checkpoint or this process, over all wall time since
    the run first started (restarts, downtime and work lost to a crash count against it); and the
    compile seconds that cache hits saved (in no badput: they were not spent)."""
    wall = max(time.time() - self.first_start_time, 1e-9)
    saved = self.to_dict()
    return {
      "goodput": self.useful_seconds / wall,
      "restarts": self.restarts,
      "wall_seconds": wall,
      **{
        f"badput_{k}": getattr(self, k)
        for k in ("compile_seconds", "checkpoint_seconds", "data_wait_seconds", "eval_seconds")
      },
      "compile_cache_hits": saved["compile_cache_hits"],
      "compile_seconds_saved": saved["compile_seconds_saved"],
    }


def first_start_time(workdir: str, is_main: bool) -> float:
  """When the run in `workdir` first started: kept in the workdir from its first life on, so that lives
  killed before the first checkpoint count against goodput too."""
  path = epath.Path(workdir) / "run_start.json"
  try:
    return float(json.loads(path.read_text(encoding="utf-8"))["first_start_time"])
  except (OSError, ValueError, KeyError, TypeError):
    now = time.time()
    if is_main:
      paths.write_bytes_atomic(path, json.dumps({"first_start_time": now}).encode())
    return now
