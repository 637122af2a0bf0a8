"""Optimizer: schedule shape, weight-decay mask, LAMB, clipping, Adafactor and the rsqrt schedule."""

import jax
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
  np.testing.assert_allclose(
    [s(0), s(5), s(10), s(60), s(110)], [0, 5e-5, 1e-4, 5e-5, 0], atol=1e-12
  )


def test_cosine_and_bad_name():
  c = base_config().optimizer
  c.update(learning_rate=1.0, warmup_steps=0, decay="cosine")
  s = learning_rate_schedule(c, 100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [1.0, 0.5, 0.0], atol=1e-6)
  c.decay = "step"
  with pytest.raises(PretrainError, match="step"):
    learning_rate_schedule(c, 100)


def test_no_decay_on_layernorm_and_biases():
  params = {
    "layer": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
    "ln": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    "embed": {"embedding": jnp.ones((3, 2))},
  }
  mask = decay_mask(params)
  assert mask == {
    "layer": {"kernel": True, "bias": False},
    "ln": {"scale": False, "bias": False},
    "embed": {"embedding": True},
  }


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
  c.update(
    name="adamw", learning_rate=1.0, warmup_steps=0, decay="constant", weight_decay=0.0, eps=1.0
  )
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


def test_rsqrt_is_t5s_inverse_square_root():
  c = base_config().optimizer
  c.update(learning_rate=1e-2, warmup_steps=10_000, decay="rsqrt")
  s = learning_rate_schedule(c, 1_000_000)
  steps = np.array([0, 1, 5_000, 10_000, 40_000, 250_000, 1_000_000])
  np.testing.assert_allclose(
    [s(n) for n in steps], 1 / np.sqrt(np.maximum(steps, 10_000)), rtol=1e-6
  )
  c.warmup_steps = 0
  with pytest.raises(PretrainError, match="warmup_steps >= 1"):
    learning_rate_schedule(c, 10)


def test_adafactor_factors_second_moments_without_momentum():
  c = base_config().optimizer
  c.update(
    name="adafactor",
    learning_rate=1e-2,
    warmup_steps=10,
    decay="rsqrt",
    weight_decay=0.0,
    grad_clip_norm=0.0,
  )
  tx, _ = make_optimizer(c, 100)
  params = {"dense": {"kernel": jnp.ones((256, 384)), "bias": jnp.ones(384)}}
  state = tx.init(params)
  factored = state[0]
  assert factored.v_row["dense"]["kernel"].shape == (256,)
  assert factored.v_col["dense"]["kernel"].shape == (384,)
  assert factored.v["dense"]["bias"].shape == (384,)  # 1-D: unfactored.
  assert not any(leaf.shape == (256, 384) for leaf in jax.tree.leaves(state))  # No momentum buffer.
  g = jax.tree.map(lambda p: jnp.linspace(-1.0, 1.0, p.size).reshape(p.shape), params)
  updates, _ = tx.update(g, state, params)
  reference = optax.adafactor(learning_rate=1e-2)
  expected, _ = reference.update(g, reference.init(params), params)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_adafactor_weight_decay_is_scaled_by_the_learning_rate():
  c = base_config().optimizer
  c.update(
    name="adafactor",
    learning_rate=0.1,
    warmup_steps=0,
    decay="constant",
    weight_decay=0.5,
    grad_clip_norm=0.0,
  )
  tx, _ = make_optimizer(c, 10)
  params = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(
    updates["dense"]["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6
  )  # -lr * wd * param
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


def test_unknown_optimizer_lists_adafactor():
  c = base_config().optimizer
  c.name = "sgd"
  with pytest.raises(PretrainError, match="'adamw', 'lamb' or 'adafactor'"):
    make_optimizer(c, 10)
