"""A `jax.profiler` trace of chosen training steps, written where TensorBoard's profile plugin finds it.

`metrics.profile_steps="START,END"` traces steps START..END (inclusive, numbered
as in metrics.jsonl: step 1 is the first step a run takes) into
`<workdir>/tensorboard/plugins/profile/<run>/`, the log dir of the run's
TensorBoard writer (pretrain/metrics.py), so `tensorboard --logdir
<workdir>/tensorboard` opens it under PROFILE. Each step is a
`StepTraceAnnotation` named 'train', which the plugin's step views read.

Only process 0 traces unless `metrics.profile_all_processes`. A gs:// workdir
is traced into a local temporary folder and copied up when the trace stops.
A resumed run traces the steps of the range that this life runs.
"""

import logging
import os
import shutil
import tempfile
from typing import Any, Callable

from etils import epath
import jax

from pretrain import paths
from pretrain.errors import PretrainError

_logger = logging.getLogger("pretrain.train")

TRACE_NAME = "train"  # The StepTraceAnnotation of every traced step.


def parse_steps(value: Any) -> tuple[int, int] | None:
  """(START, END) of 'START,END' (or a pair); None for '' (no profiling). PretrainError otherwise."""
  if value in ("", None):
    return None
  parts = value.split(",") if isinstance(value, str) else list(value)
  try:
    start, end = (int(str(p).strip()) for p in parts)
  except ValueError:
    start = end = None
  if start is None or not 1 <= start <= end:
    raise PretrainError(
      f"metrics.profile_steps={value!r} must be 'START,END' with 1 <= START <= END "
      "(steps numbered from 1, as in metrics.jsonl), or '' for no profile"
    )
  return start, end


def trace_dir(workdir: str) -> str:
  """The TensorBoard log dir of the run in `workdir`, which the profile plugin reads."""
  return os.path.join(workdir, "tensorboard")


class StepProfiler:
  """Starts a trace before step START and stops it after step END (its outputs ready).

  `wrap` the compiled step once; the wrapper counts the steps it runs from
  `start_step` (the step the run resumes at) and annotates each.
  """

  def __init__(self, metrics_cfg, workdir: str, start_step: int):
    self.steps = parse_steps(metrics_cfg.get("profile_steps", ""))
    all_processes = bool(metrics_cfg.get("profile_all_processes", False))
    if not (all_processes or jax.process_index() == 0):
      self.steps = None
    self._workdir = workdir
    self._step = int(start_step)
    self._local_dir: str | None = None  # Set while a trace is open.

  @property
  def active(self) -> bool:
    return self._local_dir is not None

  def wrap(self, step_fn: Callable) -> Callable:
    """step_fn itself without profile_steps; else step_fn traced over the configured steps."""
    if self.steps is None:
      return step_fn

    def profiled(*args):
      self._step += 1
      start, end = self.steps
      if start <= self._step <= end and not self.active:
        self._start()
      with jax.profiler.StepTraceAnnotation(TRACE_NAME, step_num=self._step):
        out = step_fn(*args)
      if self.active and self._step >= end:
        jax.block_until_ready(out)  # The trace holds the device work of step END too.
        self.stop()
      return out

    return profiled

  def _start(self) -> None:
    target = trace_dir(self._workdir)
    self._local_dir = (
      tempfile.mkdtemp(prefix="pretrain-profile-") if paths.is_remote(target) else target
    )
    jax.profiler.start_trace(self._local_dir)
    _logger.info("profiling steps %d..%d into %s", self._step, self.steps[1], target)

  def stop(self) -> None:
    """Stops an open trace (the run ended inside the range, or step END ran) and writes it out."""
    if not self.active:
      return
    local, self._local_dir = self._local_dir, None
    jax.profiler.stop_trace()
    target = trace_dir(self._workdir)
    if local == target:
      return
    try:  # A remote workdir: copy the trace's files up, keeping their layout.
      for root, _, files in os.walk(local):
        for name in files:
          path = os.path.join(root, name)
          dest = epath.Path(target) / os.path.relpath(path, local)
          dest.parent.mkdir(parents=True, exist_ok=True)  # A no-op under a gs:// bucket.
          with open(path, "rb") as f:
            dest.write_bytes(f.read())
    except Exception as e:  # pylint: disable=broad-except
      # A storage error loses the trace, not the run.
      _logger.warning("could not copy the profile to %s (%s: %s)", target, type(e).__name__, e)
    finally:
      shutil.rmtree(local, ignore_errors=True)
