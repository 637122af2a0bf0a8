"""objectives.losses: cross_entropy against a float64 reference, the chunked one against the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import layers
from pretrain.objectives import losses


def test_cross_entropy_is_log_softmax_at_the_label():
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, (2, 5, 11)).astype(np.float32)
  labels = rng.integers(0, 11, (2, 5))
  nll, correct, log_z = losses.cross_entropy(
    jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), labels
  )
  x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
  want_z = np.log(np.exp(x).sum(-1))
  np.testing.assert_allclose(log_z, want_z, rtol=1e-6)
  np.testing.assert_allclose(
    nll, want_z - np.take_along_axis(x, labels[..., None], -1)[..., 0], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_array_equal(correct, (x.argmax(-1) == labels).astype(np.float32))
  assert nll.dtype == correct.dtype == log_z.dtype == jnp.float32
  # bfloat16 logits are read in float32.
  nll16, _, _ = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  np.testing.assert_array_equal(nll16, nll)


def _head_inputs(vocab_axis, tokens=(3, 7), embed=16, vocab=50):
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(*tokens, embed)), jnp.float32)
  shape = (vocab, embed) if vocab_axis == 0 else (embed, vocab)
  kernel = jnp.asarray(rng.normal(0.0, 0.3, shape), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.1, (vocab,)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)
  return hidden, kernel, bias, labels


@pytest.mark.parametrize(
  "vocab_axis, dtype", [(0, jnp.float32), (1, jnp.float32), (0, jnp.bfloat16)]
)
def test_chunked_cross_entropy_equals_the_plain_one_with_its_gradients(vocab_axis, dtype):
  hidden, kernel, bias, labels = _head_inputs(vocab_axis)
  contract = (2, 1 - vocab_axis)

  def plain(h, k, b):
    return losses.cross_entropy(layers.matmul(h, k, contract, dtype) + b, labels)

  def chunked(h, k, b):  # 21 tokens in chunks of 4: the last chunk is padded.
    return losses.chunked_cross_entropy(
      h, k, labels, chunk_size=4, vocab_axis=vocab_axis, bias=b, dtype=dtype
    )

  for want, got in zip(plain(hidden, kernel, bias), chunked(hidden, kernel, bias)):
    assert got.shape == labels.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def objective(fn):  # A loss that reads all three outputs, as a z-loss objective does.
    def f(h, k, b):
      nll, correct, log_z = fn(h, k, b)
      return jnp.sum(nll * (1.0 + correct)) + 1e-2 * jnp.sum(log_z**2)

    return f

  want = jax.grad(objective(plain), (0, 1, 2))(hidden, kernel, bias)
  got = jax.jit(jax.grad(objective(chunked), (0, 1, 2)))(hidden, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(w))))


def test_chunked_cross_entropy_never_holds_the_whole_batch_of_logits():
  hidden, kernel, _, labels = _head_inputs(0, tokens=(8, 64), embed=32, vocab=4096)
  logits_bytes, chunk_logits_bytes = 8 * 64 * 4096 * 4, 64 * 4096 * 4

  def temp_bytes(loss):
    grad = jax.jit(jax.grad(lambda h, k: jnp.sum(loss(h, k)[0]), (0, 1)))
    return grad.lower(hidden, kernel).compile().memory_analysis().temp_size_in_bytes

  plain = temp_bytes(
    lambda h, k: losses.cross_entropy(layers.matmul(h, k, (2, 1), jnp.float32), labels)
  )
  chunked = temp_bytes(lambda h, k: losses.chunked_cross_entropy(h, k, labels, chunk_size=64))
  assert plain >= logits_bytes
  # A few chunks' logits (the forward's, the backward's recomputed ones and their gradient) at most.
  assert chunked <= 3 * chunk_logits_bytes, (chunked, plain)


def test_chunked_cross_entropy_refuses_a_bad_chunk_size():
  hidden, kernel, _, labels = _head_inputs(0)
  with pytest.raises(PretrainError, match="chunk_size"):
    losses.chunked_cross_entropy(hidden, kernel, labels, chunk_size=0)
