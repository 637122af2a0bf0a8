"""Contractions on CPU: bf16-input backward matmuls, gradients as float32 math gives, in float32 jax's own."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.models import layers, precision


def _rounded(x):
  return x.astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize(
  "spec, a_shape, b_shape",
  [
    ("abk,nk->abn", (2, 8, 16), (4, 16)),  # layers.matmul's tied head.
    ("bhqk,bhkd->bhqd", (2, 3, 8, 6), (2, 3, 6, 4)),  # Attention's probs x values.
    ("bhqd,bhkd->bhqk", (2, 3, 8, 4), (2, 3, 6, 4)),  # Its logits: the key gradient sums over q.
  ],
)
def test_gradients_match_float32_math_on_rounded_inputs(spec, a_shape, b_shape):
  a = jax.random.normal(jax.random.key(0), a_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)

  def loss(fn):
    return lambda a, b: jnp.sum(jnp.sin(fn(a, b)))

  got = jax.grad(loss(lambda a, b: precision.einsum(spec, a, b, jnp.bfloat16)), (0, 1))(a, b)
  want = jax.grad(loss(lambda a, b: jnp.einsum(spec, _rounded(a), _rounded(b))), (0, 1))(a, b)
  for g, w in zip(got, want):
    assert g.dtype == jnp.float32
    # The cotangent is rounded to bfloat16 before the backward matmuls: ~3 significant digits.
    np.testing.assert_allclose(g, w, rtol=0.02, atol=0.02 * float(jnp.max(jnp.abs(w))))


def _dots(fn, *args) -> list[str]:
  text = jax.jit(fn).lower(*args).as_text()
  return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


def test_on_cpu_the_backward_matmuls_take_bfloat16_inputs():
  x, kernel = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
  grad = jax.grad(lambda x, k: jnp.sum(layers.matmul(x, k, (2, 0), jnp.bfloat16) ** 2), (0, 1))
  dots = _dots(grad, x, kernel)
  assert len(dots) == 3
  for line in dots:  # (bf16, bf16) -> f32 each: forward, input gradient, kernel gradient.
    operands, result = line.split("->")
    assert operands.count("bf16") == 2 and "f32" not in operands and "f32" in result, line


def test_attention_gradients_run_as_bfloat16_library_dots():
  # Summed over the query axis, the key and value gradients' left operand is read transposed:
  # XLA:CPU would convert both operands and run a float32 Eigen dot (a `dot(` outside a fusion).
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 16, 8)) for i in range(3))

  def loss(q, k, v):
    probs = jax.nn.softmax(precision.einsum("bhqd,bhkd->bhqk", q, k, jnp.bfloat16), axis=-1)
    return jnp.sum(precision.einsum("bhqk,bhkd->bhqd", probs, v, jnp.bfloat16) ** 2)

  grad = jax.grad(loss, (0, 1, 2))
  entry = jax.jit(grad).lower(q, k, v).compile().as_text().split("ENTRY")[1]
  assert re.search(r"= \S+ dot\(", entry) is None, "a dot left to Eigen"
  assert entry.count("ynn_fusion") >= 6  # Forward 2, backward 4: each a library fusion.
  rounded = [_rounded(x) for x in (q, k, v)]

  def plain(q, k, v):
    return jnp.sum(
      jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), -1), v) ** 2
    )

  for g, w in zip(grad(q, k, v), jax.grad(plain, (0, 1, 2))(*rounded)):
    np.testing.assert_allclose(g, w, rtol=0.03, atol=0.03 * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize(
  "shape, perm", [((4, 6, 10), (2, 0, 1)), ((2, 3, 6, 4), (0, 1, 3, 2)), ((3, 5), (1, 0))]
)
def test_transpose_in_memory_is_the_transpose(shape, perm):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  np.testing.assert_array_equal(precision._transpose_in_memory(x, perm), jnp.transpose(x, perm))


def test_float32_gradients_are_jaxs_own_and_other_platforms_keep_the_plain_dot(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (4, 8, 16))
  kernel = jax.random.normal(jax.random.key(1), (16, 32))

  def loss(x, k):
    return jnp.sum(jnp.sin(layers.matmul(x, k, (2, 0), jnp.float32)))

  def plain(x, k):
    return jnp.sum(jnp.sin(jnp.einsum("abk,kn->abn", x, k)))

  f32 = jax.grad(loss, (0, 1))
  assert precision.custom_backward()  # CPU: the backward is written out, in float32 throughout.
  assert all("bf16" not in line for line in _dots(f32, x, kernel))
  for g, w in zip(f32(x, kernel), jax.grad(plain, (0, 1))(x, kernel)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  monkeypatch.setattr(precision, "target_platform", lambda: "tpu")
  assert not precision.custom_backward()
  tpu = jax.grad(lambda x, k: jnp.sum(layers.matmul(x, k, (2, 0), jnp.bfloat16)), (0, 1))
  # jax's own transpose: the backward matmuls upcast the bf16 operand to meet the f32 cotangent.
  assert any("f32" in line.split("->")[0] for line in _dots(tpu, x, kernel))


def test_an_index_summed_in_one_operand_is_refused():
  with pytest.raises(ValueError, match="summed within one operand"):
    jax.grad(lambda a: jnp.sum(precision.einsum("ij,jk->k", a, a, jnp.bfloat16)))(jnp.ones((3, 3)))


@pytest.mark.parametrize(
  "x_shape, b_shape",
  [
    ((4, 3, 8, 8), (1, 3, 8, 8)),  # T5's relative position bias, broadcast over the batch.
    ((2, 5, 6), (6,)),  # Broadcast over batch and length.
    ((2, 5, 6), (2, 1, 6)),  # Broadcast along a later axis: plain x + b.
  ],
)
def test_add_gradients_equal_plain_addition(x_shape, b_shape):
  x = jax.random.normal(jax.random.key(0), x_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)
  w = jax.random.normal(jax.random.key(2), x_shape)

  def loss(fn):
    return lambda x, b: jnp.sum(jnp.sin(fn(x, b)) * w)

  got = jax.jit(jax.grad(loss(precision.add), (0, 1)))(x, b)
  want = jax.grad(loss(lambda x, b: x + b), (0, 1))(x, b)
  np.testing.assert_allclose(precision.add(x, b), x + b)
  for g, v in zip(got, want):
    assert g.shape == v.shape
    np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-5)


def test_on_cpu_a_bias_gradient_is_a_dot_not_a_reduction():
  x = jax.random.normal(jax.random.key(0), (4, 3, 8, 8))
  b = jax.random.normal(jax.random.key(1), (1, 3, 8, 8))

  def compiled(fn):
    grad = jax.jit(jax.grad(lambda x, b: jnp.sum(jnp.sin(fn(x, b))), argnums=1))
    return grad.lower(x, b).compile().as_text()

  assert "reduce(" in compiled(lambda x, b: x + b)  # What the custom gradient replaces.
  text = compiled(precision.add)
  assert "reduce(" not in text
  assert re.search(r"= f32\[1,192\]\S* dot\(", text)  # [batch] x [batch, 3 * 8 * 8].
