"""Jobs: one training-like run per process, skipped when finished, resumed when interrupted.

The ablation runner (one job per variant and seed) and the fine-tuning suite
(one job per task, learning rate and seed) both run their jobs here. A job is
a top-level function `fn(config: ConfigDict, workdir: str) -> dict` that
trains (or resumes) in `workdir` and returns its last metrics row with a
"step"; `run_job` runs it in a fresh spawned process (so its peak memory and
compile time are its own), and the child writes `workdir/result.json`:

  status  done | interrupted (SIGTERM/SIGINT: saved, not finished) | failed
  error   why it did not finish
  steps   the steps it was asked for
  peak_memory_bytes, peak_memory_kind   device peak where the runtime reports it, else host RSS
  last    the job's last metrics row

A rerun skips a job whose result says done for the same number of steps and
runs any other again, which resumes it from its own checkpoints.
"""

import importlib
import json
import multiprocessing
import resource
from typing import Any, Callable

from etils import epath
import ml_collections

from pretrain import cli
from pretrain.errors import PretrainError

RESULT = "result.json"


def _target_name(fn: Callable) -> str:
  return f"{fn.__module__}:{fn.__qualname__}"


def _child(target: str, config_dict: dict, workdir: str, steps: int) -> None:
  """Child process: run one job and record how it ended."""
  cli.quiet_library_logs()
  module, name = target.split(":")
  run_in_process(getattr(importlib.import_module(module), name), config_dict, workdir, steps)


def run_in_process(fn: Callable, config_dict: dict, workdir: str, steps: int) -> None:
  """Runs job `fn` in this process (what the child does) and writes its result record."""
  import jax  # pylint: disable=g-import-not-at-top

  status, error, last = "done", "", {}
  try:
    last = fn(ml_collections.ConfigDict(config_dict), workdir) or {}
    if last.get("step", 0) < steps:  # SIGTERM/SIGINT: saved, not finished.
      status, error = "interrupted", f"stopped at step {last.get('step')}; run again to resume"
  except PretrainError as e:
    status, error = "failed", str(e)
  stats = jax.devices()[0].memory_stats() or {}
  result = {
    "status": status,
    "error": error,
    "steps": steps,
    # Device memory where the runtime reports it (GPU/TPU), else the process' peak RSS (CPU).
    "peak_memory_bytes": int(stats.get("peak_bytes_in_use", 0))
    or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "peak_memory_kind": "device" if stats.get("peak_bytes_in_use") else "host_rss",
    "last": json.loads(json.dumps(last, default=float)),
  }
  (epath.Path(workdir) / RESULT).write_text(json.dumps(result), encoding="utf-8")


def read_result(workdir: str) -> dict | None:
  """The job's result record, or None if it never finished a process."""
  path = epath.Path(workdir) / RESULT
  return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_job(
  name: str,
  fn: Callable,
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  steps: int,
  log=print,
) -> dict[str, Any]:
  """Runs job `fn` in its own process unless its result already says done; returns the result record."""
  result = read_result(workdir)
  if result is not None:
    if result.get("status") == "done" and result.get("steps") == steps:
      log(f"{name}: finished earlier, skipped")
      return result
    (epath.Path(workdir) / RESULT).unlink()  # A failed or shorter run: again (it resumes).
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  log(f"{name}: running in {workdir}")
  process = multiprocessing.get_context("spawn").Process(
    target=_child, args=(_target_name(fn), config.to_dict(), workdir, steps)
  )
  process.start()
  process.join()
  result = read_result(workdir)
  if result is None:
    return {"status": "failed", "error": f"the job's process exited with code {process.exitcode}"}
  return result
