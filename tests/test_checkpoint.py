"""Orbax checkpoints: state + data + config, keep-last-K, restore onto another mesh bit-exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrain import sharding
from pretrain.checkpoint import Checkpointer
from pretrain.errors import PretrainError
from pretrain.sharding import make_mesh
from pretrain.config import base_config


def test_save_restore_keep_last(tmp_path):
  c = Checkpointer(str(tmp_path), every_steps=1, keep=2)
  for step in (1, 2, 3):
    c.save(step, {"w": jnp.full((4,), float(step))}, {"next_batch": step}, {"step": step})
  c.wait()
  assert c.all_steps() == [2, 3] and c.latest_step() == 3
  state, data, _ = c.restore(3, sharding.abstract({"w": jnp.zeros(4)}))
  np.testing.assert_array_equal(state["w"], np.full(4, 3.0))
  assert data == {"next_batch": 3} and c.restore_config(3) == {"step": 3}
  c.close()


def test_restore_onto_another_mesh_is_bit_exact(tmp_path):
  m = base_config().mesh
  m.update(data=8, fsdp=1, tensor=1)
  mesh_a = make_mesh(m)
  m.update(data=2, fsdp=2, tensor=2)
  mesh_b = make_mesh(m)
  x = jax.random.normal(jax.random.key(0), (16, 8))
  a = jax.device_put(x, NamedSharding(mesh_a, P("data", None)))
  c = Checkpointer(str(tmp_path), every_steps=1, keep=1)
  c.save(1, {"x": a}, {}, {})
  c.wait()
  target_sharding = NamedSharding(mesh_b, P("fsdp", "tensor"))
  state, _, _ = c.restore(
    1, {"x": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=target_sharding)}
  )
  assert state["x"].sharding == target_sharding
  np.testing.assert_array_equal(np.asarray(state["x"]), np.asarray(x))
  c.close()


def _save_steps(directory, steps):
  c = Checkpointer(directory, every_steps=1, keep=5)
  for step in steps:
    c.save(
      step,
      {"w": jnp.full((64,), float(step))},
      {"next_batch": step},
      {"step": step},
      {"restarts": step},
    )
  c.close()


def _truncate_arrays(step_dir):
  """Cuts every array data file of a checkpoint's state in half, as a crash mid-copy would."""
  import os  # pylint: disable=g-import-not-at-top

  cut = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      path = os.path.join(root, f)
      if "ocdbt" in root or f.startswith("manifest") or "/d/" in path + "/":
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
          fh.truncate(size // 2)
        cut += 1
  assert cut, "found no array files to truncate"


def test_unreadable_latest_checkpoint_falls_back_and_is_kept(tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  _save_steps(str(tmp_path), (1, 2))
  ckpt_dir = os.path.join(str(tmp_path), "checkpoints")
  _truncate_arrays(os.path.join(ckpt_dir, "2"))
  c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
  seen = []
  with caplog.at_level(logging.WARNING):
    step, state, data, progress = c.restore_newest_readable(
      sharding.abstract({"w": jnp.zeros(64)}), seen.append
    )
  assert step == 1 and data == {"next_batch": 1} and progress == {"restarts": 1}
  np.testing.assert_array_equal(state["w"], np.full(64, 1.0))
  assert seen == [{"step": 2}, {"step": 1}]
  assert any("step 2" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
  kept = [d for d in os.listdir(ckpt_dir) if d.startswith("2.unreadable-")]
  assert len(kept) == 1 and c.all_steps() == [1]  # Moved aside, not deleted.
  c.save(2, {"w": jnp.full((64,), 9.0)}, {}, {}, {})  # The step can be written again.
  c.close()
  assert Checkpointer(str(tmp_path), 1, 5).all_steps() == [1, 2]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  import os  # pylint: disable=g-import-not-at-top

  _save_steps(str(tmp_path), (1,))
  _truncate_arrays(os.path.join(str(tmp_path), "checkpoints", "1"))
  c = Checkpointer(str(tmp_path), every_steps=1, keep=5)
  with pytest.raises(PretrainError, match="no readable checkpoint.*1"):
    c.restore_newest_readable(sharding.abstract({"w": jnp.zeros(64)}), lambda cfg: None)
  c.close()


def test_incompatible_config_propagates_without_touching_checkpoints(tmp_path):
  _save_steps(str(tmp_path), (1,))
  c = Checkpointer(str(tmp_path), every_steps=1, keep=5)

  def refuse(cfg):
    raise PretrainError("different model")

  with pytest.raises(PretrainError, match="different model"):
    c.restore_newest_readable(sharding.abstract({"w": jnp.zeros(64)}), refuse)
  assert c.all_steps() == [1]
  c.close()


def test_a_failed_save_names_the_step_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  _save_steps(str(tmp_path), (1,))
  c = Checkpointer(str(tmp_path), every_steps=1, keep=5)

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(c._manager, "save", disk_full)  # pylint: disable=protected-access
  with pytest.raises(PretrainError, match=r"step 2 .*No space left on device.*\(1\) are intact"):
    c.save(2, {"w": jnp.zeros(64)}, {}, {}, {})
  monkeypatch.undo()
  c.close()
  state, *_ = Checkpointer(str(tmp_path), 1, 5).restore(1, sharding.abstract({"w": jnp.zeros(64)}))
  np.testing.assert_array_equal(state["w"], np.full(64, 1.0))
