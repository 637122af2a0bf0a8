"""The timing harness: cases warmed up, then timed window by window, round robin."""

import dataclasses
import math
import statistics
import time
from typing import Any, Callable

from pretrain.errors import PretrainError


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per step of each timing window; the median window is the figure."""

  window_step_seconds: tuple[float, ...]
  steps_per_window: int

  @property
  def step_seconds(self) -> float:
    return statistics.median(self.window_step_seconds)


@dataclasses.dataclass
class Case:
  """One thing to time: `run(n)` does n steps and returns once they are done.

  `report(timing)` turns its timing into a result row. With `window_seconds`,
  the steps per window follow from the warmup's pace instead of `steps`;
  `max_seconds` caps the timed seconds of a slow case (one window at least).
  """

  label: str
  run: Callable[[int], None]
  report: Callable[[Timing], dict]
  steps: int = 5
  warmup: int = 2
  window_seconds: float | None = None
  max_seconds: float = float("inf")
  context: Callable[[], Any] | None = None  # What profile.breakdown() needs of a project case.


def measure(cases: list[Case], windows: int = 3, pause: float = 0.25) -> list[Timing]:
  """Warms every case up, then times them window by window, round robin.

  Interleaving keeps ratios between cases honest when the machine's speed
  drifts (shared CPUs do); the pause lets the last case's spinning worker
  threads go idle before the next window starts.
  """
  if windows < 1:
    raise PretrainError(f"windows={windows} must be positive")
  steps, spent, seconds = [], [0.0] * len(cases), [[] for _ in cases]
  for case in cases:
    if case.steps < 1 or case.warmup < 1:
      raise PretrainError(
        f"{case.label}: steps={case.steps} and warmup={case.warmup} must be positive"
      )
    t0 = time.perf_counter()
    case.run(case.warmup)
    pace = (
      time.perf_counter() - t0
    ) / case.warmup  # An overestimate: the first step is the slowest.
    n = case.steps
    if case.window_seconds:
      n = int(min(max(case.window_seconds / pace, 1), 1000))
    if math.isfinite(case.max_seconds):
      n = int(max(1, min(n, case.max_seconds / windows / pace)))
    steps.append(n)
  for _ in range(windows):
    for i, case in enumerate(cases):
      if seconds[i] and spent[i] > case.max_seconds:
        continue
      time.sleep(pause)
      t0 = time.perf_counter()
      case.run(steps[i])
      elapsed = time.perf_counter() - t0
      spent[i] += elapsed
      seconds[i].append(elapsed / steps[i])
  return [Timing(tuple(s), n) for s, n in zip(seconds, steps)]


def run_cases(cases: list[Case], windows: int = 3) -> list[dict]:
  return [case.report(t) for case, t in zip(cases, measure(cases, windows))]


def throughput(
  name: str, dtype: str, timing: Timing, tokens: int, flops: float, peak: float
) -> dict:
  """The result row of a training step: `tokens` and model `flops` a step, against `peak` FLOP/s."""
  seconds = timing.step_seconds
  return {
    "name": name,
    "dtype": dtype,
    "step_seconds": seconds,
    "window_step_seconds": list(timing.window_step_seconds),
    "steps_per_window": timing.steps_per_window,
    "tokens_per_sec": tokens / seconds,
    "tflops_per_sec": flops / seconds / 1e12,
    "peak_flops": peak,
    "mfu": flops / seconds / peak,
    "flops_per_step": flops,
  }
