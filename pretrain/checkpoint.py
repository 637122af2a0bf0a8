"""Orbax checkpoints holding the train state, the data iterator's state, the config and the run's progress.

Saves are asynchronous (training continues while the arrays are written), the
last `keep` are kept, and a run restarted on the same workdir resumes from the
newest readable one. A checkpoint that cannot be read (truncated, corrupted) is
moved aside to `<step>.unreadable-<time>` (never deleted) with a warning naming
the step, and the one before it is used. Restoring onto a different mesh works
because the state is read into the shardings of the new run's abstract state.
The workdir may be a gs:// URL: orbax writes it with tensorstore's GCS driver.
"""

import logging
import os
import time
from typing import Callable

from etils import epath
import jax
import orbax.checkpoint as ocp

from pretrain import paths
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)
ITEMS = ("state", "data", "config", "progress")


class Checkpointer:
  """One workdir's checkpoints: `<workdir>/checkpoints/<step>/{state,data,config}`."""

  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    if paths.is_remote(workdir):
      self.directory = os.fspath(epath.Path(workdir) / "checkpoints")
    else:  # Orbax wants an absolute local path.
      self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = int(every_steps)
    self._saving = None  # The step of the latest save started.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # Half-written saves of a killed run.
    )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    except OSError as e:
      raise PretrainError(f"cannot use checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(
    self, step: int, state, data_state: dict, config: dict, progress: dict | None = None
  ) -> None:
    """Starts an async save of `step` (a step saved already is left as it is).

    A failed write (disk full, unwritable directory) raises PretrainError naming
    the step whose write failed: here, or at the next save or `wait` when it
    failed in the background. The checkpoints written before it are untouched
    (orbax writes into a temporary folder and renames it only when complete).
    """
    if step in self._manager.all_steps():
      return
    # The previous save's background write may have failed: report it as that step's failure, not
    # this one's (orbax's save would raise it from inside the new save).
    self.wait()
    self._saving = step
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config),
          progress=ocp.args.JsonSave(progress or {}),
        ),
        force=True,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, e: Exception) -> PretrainError:
    good = [s for s in self._manager.all_steps() if s != step]
    return PretrainError(
      f"saving the checkpoint of step {step} in {self.directory} failed ({type(e).__name__}: {e}); "
      f"the earlier checkpoints ({', '.join(map(str, good)) or 'none'}) are intact"
    )

  def restore_config(self, step: int) -> dict:
    out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def restore(self, step: int, abstract_state) -> tuple[object, dict, dict]:
    """Reads `step` into the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
    items = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
    )
    out = self._manager.restore(step, args=items)
    try:
      progress = self._manager.restore(
        step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
      )["progress"]
    except Exception:  # pylint: disable=broad-except
      progress = {}  # Written before progress was recorded.
    _logger.info("restored step %d from %s", step, self.directory)
    return out["state"], out["data"], progress or {}

  def restore_newest_readable(self, abstract_state, check_config: Callable[[dict], None]):
    """(step, state, data, progress) of the newest checkpoint that reads back, or None if there is none.

    `check_config(saved_config)` may raise PretrainError (a different model):
    that is an error of the run, not of the checkpoint, and propagates. Any
    other failure marks the checkpoint unreadable: it is moved aside, a warning
    names it, and the next older one is tried.
    """
    bad = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        check_config(self.restore_config(step))
        return (step, *self.restore(step, abstract_state))
      except PretrainError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        moved = self._quarantine(step)
        bad.append(f"{step} ({type(e).__name__})")
        _logger.warning(
          "checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and trying the "
          "previous one",
          step,
          self.directory,
          type(e).__name__,
          str(e)[:300],
          moved,
        )
    if bad:
      raise PretrainError(
        f"no readable checkpoint in {self.directory}: steps {', '.join(bad)} are unreadable "
        "(moved aside, not deleted); use a new workdir or restore them by hand"
      )
    return None

  def _quarantine(self, step: int) -> str:
    source = epath.Path(self.directory) / str(step)
    target = source.parent / f"{source.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0 and source.is_dir():
      source.rename(
        target
      )  # On GCS a copy of every object, then a delete: not atomic, but nothing is lost.
    self._manager.reload()
    return os.fspath(target)

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()
