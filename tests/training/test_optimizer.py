"""Optimizer: schedule shape, weight-decay mask, LAMB, clipping."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pretrain.config import base_config
from pretrain.errors import PretrainError
from pretrain.training.optimizer import decay_mask, learning_rate_schedule, make_optimizer


def test_warmup_then_linear_decay_to_zero():
  c = base_config().optimizer
  c.update(learning_rate=1e-4, warmup_steps=10)
  s = learning_rate_schedule(c, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 5e-5, 1e-4, 5e-5, 0], atol=1e-12)


def test_cosine_and_bad_name():
  c = base_config().optimizer
  c.update(learning_rate=1.0, warmup_steps=0, decay="cosine")
  s = learning_rate_schedule(c, 100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [1.0, 0.5, 0.0], atol=1e-6)
  c.decay = "step"
  with pytest.raises(PretrainError, match="step"):
    learning_rate_schedule(c, 100)


def test_no_decay_on_layernorm_and_biases():
  params = {"layer": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "ln": {"scale": jnp.ones(2), "bias": jnp.ones(2)}, "embed": {"embedding": jnp.ones((3, 2))}}
  mask = decay_mask(params)
  assert mask == {"layer": {"kernel": True, "bias": False}, "ln": {"scale": False, "bias": False},
                  "embed": {"embedding": True}}


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_decay_applies_only_where_masked(name):
  c = base_config().optimizer
  c.update(name=name, learning_rate=0.1, warmup_steps=0, decay="constant", weight_decay=0.5)
  tx, _ = make_optimizer(c, 10)
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  zeros = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
  assert float(updates["dense"]["kernel"][0, 0]) < 0.0


def test_global_norm_clipping():
  c = base_config().optimizer
  # eps=1 makes Adam's first update depend on the gradient's size, so clipping shows.
  c.update(name="adamw", learning_rate=1.0, warmup_steps=0, decay="constant", weight_decay=0.0, eps=1.0)
  params = {"w": jnp.zeros(2)}
  g = {"w": jnp.array([30.0, 40.0])}
  c.grad_clip_norm = 1.0
  tx, _ = make_optimizer(c, 10)
  clipped, _ = tx.update(g, tx.init(params), params)
  c.grad_clip_norm = 0.0
  tx, _ = make_optimizer(c, 10)
  expected, _ = tx.update({"w": g["w"] / 50.0}, tx.init(params), params)
  np.testing.assert_allclose(clipped["w"], expected["w"], rtol=1e-6)
  unclipped, _ = tx.update(g, tx.init(params), params)
  assert not np.allclose(unclipped["w"], expected["w"])
