"""Orbax checkpoints: state + data + config, keep-last-K, restore onto another mesh bit-exactly."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrain.checkpoint import Checkpointer, abstract_like
from pretrain.sharding import make_mesh
from pretrain.config import base_config


def test_save_restore_keep_last(tmp_path):
  c = Checkpointer(str(tmp_path), every_steps=1, keep=2)
  for step in (1, 2, 3):
    c.save(step, {"w": jnp.full((4,), float(step))}, {"next_batch": step}, {"step": step})
  c.wait()
  assert c.all_steps() == [2, 3] and c.latest_step() == 3
  state, data = c.restore(3, abstract_like({"w": jnp.zeros(4)}))
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
  state, _ = c.restore(1, {"x": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=target_sharding)})
  assert state["x"].sharding == target_sharding
  np.testing.assert_array_equal(np.asarray(state["x"]), np.asarray(x))
  c.close()
