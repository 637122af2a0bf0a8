"""Orbax checkpoints holding the train state, the data iterator's state and the config.

Saves are asynchronous (training continues while the arrays are written), the
last `keep` are kept, and a run restarted on the same workdir resumes from the
latest one. Restoring onto a different mesh works because the state is read
into the shardings of the new run's abstract state.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp

from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)


class Checkpointer:
  """One workdir's checkpoints: `<workdir>/checkpoints/<step>/{state,data,config}`."""

  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every_steps = int(every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "data", "config"))
    except OSError as e:
      raise PretrainError(f"cannot use checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    """Starts an async save of `step` (a step saved already is left as it is)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config),
        ),
        force=True,
    )

  def restore_config(self, step: int) -> dict:
    out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def restore(self, step: int, abstract_state) -> tuple[object, dict]:
    """Reads `step` into the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
    out = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
        ),
    )
    _logger.info("restored step %d from %s", step, self.directory)
    return out["state"], out["data"]

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) for restoring into the layout of `tree`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
