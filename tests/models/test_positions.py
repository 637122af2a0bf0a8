"""Positions: segment restarts, sinusoidal table, RoPE properties, ALiBi slopes and bias, T5 buckets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import positions


def test_segment_positions_restart_at_each_segment():
  ids = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5]])
  np.testing.assert_array_equal(
    positions.segment_positions(jnp.asarray(ids)),
    [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]],
  )
  np.testing.assert_array_equal(positions.default_positions(4), [[0, 1, 2, 3]])


def test_sinusoidal_table_values():
  table = np.asarray(positions.sinusoidal_table(50, 8))
  assert table.shape == (50, 8)
  np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1], atol=1e-7)
  # Feature pair i has timescale 10000^(2i/8): 1, 10, 100, 1000.
  p = 37
  expected = np.stack(
    [np.sin(p / 10.0 ** np.arange(4)), np.cos(p / 10.0 ** np.arange(4))], -1
  ).reshape(8)
  np.testing.assert_allclose(table[p], expected, atol=2e-5)
  # Position ids (e.g. per segment) index the same table.
  ids = np.array([[3, 0, 49]])
  np.testing.assert_allclose(
    positions.sinusoidal_embedding(ids, 8)[0], table[[3, 0, 49]], atol=1e-6
  )
  with pytest.raises(PretrainError, match="even"):
    positions.sinusoidal_table(4, 7)


def _rope(x, pos, **kw):
  """RoPE of one vector per (batch) position: x [n, head_dim], pos [n] -> [n, head_dim]."""
  return positions.apply_rope(jnp.asarray(x)[:, None, None, :], jnp.asarray(pos)[:, None], **kw)[
    :, 0, 0
  ]


def test_rope_scores_depend_only_on_position_difference():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 16)).astype(np.float32)
  m = np.array([0, 3, 10, 100, 1000])
  n = np.array([2, 3, 4, 90, 1003])
  scores = []
  for shift in (0, 7, 500):
    rq = _rope(np.tile(q, (5, 1)), m + shift)
    rk = _rope(np.tile(k, (5, 1)), n + shift)
    scores.append(np.sum(np.asarray(rq) * np.asarray(rk), -1))
  np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores[2], scores[0], rtol=1e-4, atol=1e-4)
  # Different differences give different scores; position 0 is the identity.
  assert len(set(np.round(scores[0], 3))) == 5
  np.testing.assert_allclose(_rope(q[None], [0]), q[None], atol=1e-7)


def test_rope_rotation_values_and_partial_fraction():
  head_dim = 8
  x = np.arange(1, head_dim + 1, dtype=np.float32)
  pos = 5
  out = np.asarray(_rope(x[None], [pos], theta=100.0, fraction=0.5))[0]
  # 4 rotary dims: pairs (0, 2) and (1, 3) at frequencies 100^(-0/4) and 100^(-2/4).
  angles = pos * np.array([1.0, 0.1])
  expected = np.concatenate(
    [
      x[:2] * np.cos(angles) - x[2:4] * np.sin(angles),
      x[2:4] * np.cos(angles) + x[:2] * np.sin(angles),
      x[4:],
    ]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[4:], x[4:])  # The dims past the rotary fraction are untouched.
  assert positions.rotary_dims(64, 0.25) == 16 and positions.rotary_dims(10, 0.5) == 4
  with pytest.raises(PretrainError, match="rotary_fraction"):
    positions.rotary_dims(8, 0.1)


def test_rope_at_default_positions_is_a_table_on_cpu():
  # XLA:CPU would fuse sin/cos into each consumer; known positions give numpy tables instead.
  x = jax.random.normal(jax.random.key(0), (2, 16, 2, 8))
  known = positions.default_positions(16)
  assert isinstance(known, np.ndarray)

  def loss(x, pos):
    return jnp.sum(positions.apply_rope(x, pos) ** 3)

  compiled = jax.jit(lambda x: jax.grad(loss)(x, known)).lower(x).compile().as_text()
  assert " sine(" not in compiled and " cosine(" not in compiled
  traced = jax.jit(lambda x, pos: (positions.apply_rope(x, pos), jax.grad(loss)(x, pos)))
  assert (
    " sine(" in traced.lower(x, jnp.asarray(known)).compile().as_text()
  )  # Traced ids: in the program.
  want_y, want_g = traced(x, jnp.asarray(known))
  np.testing.assert_allclose(positions.apply_rope(x, known), want_y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(x, known), want_g, rtol=1e-5, atol=1e-5)


def test_rope_with_per_segment_positions_repeats_each_segment():
  x = np.random.default_rng(1).normal(size=(1, 6, 2, 4)).astype(np.float32)
  x[:, 3:] = x[:, :3]  # Two packed copies of one 3-token sequence.
  pos = positions.segment_positions(jnp.asarray([[1, 1, 1, 2, 2, 2]]))
  out = np.asarray(positions.apply_rope(jnp.asarray(x), pos))
  np.testing.assert_array_equal(out[:, 3:], out[:, :3])
  assert not np.allclose(out[:, 1], x[:, 1])


def test_alibi_slopes_for_8_and_12_heads():
  np.testing.assert_allclose(positions.alibi_slopes(8), [2.0**-i for i in range(1, 9)])
  # 12 heads: the 8-head series, then every other slope of the 16-head series 2^(-k/2), k = 1, 3, 5, 7.
  np.testing.assert_allclose(
    positions.alibi_slopes(12),
    [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5],
    rtol=1e-6,
  )
  np.testing.assert_allclose(positions.alibi_slopes(1), [2.0**-8])


def test_alibi_bias_forms():
  slopes = np.array([0.5, 0.25], np.float32)
  pos = np.array([[0, 1, 2, 0, 1]])  # Two packed segments.
  sym = np.asarray(positions.alibi_bias(slopes, pos, pos))
  causal = np.asarray(positions.alibi_bias(slopes, pos, pos, bidirectional=False))
  assert sym.shape == (1, 2, 5, 5)
  np.testing.assert_allclose(sym[0, 0, 2], [-1.0, -0.5, 0, -1.0, -0.5])
  np.testing.assert_allclose(sym[0, 1, 0], [0, -0.25, -0.5, 0, -0.25])
  np.testing.assert_allclose(causal[0, 0, 2], [-1.0, -0.5, 0, -1.0, -0.5])
  np.testing.assert_allclose(
    causal[0, 0, 0], [0, 0.5, 1.0, 0, 0.5]
  )  # Future keys: a causal mask hides them.
  visible = pos[0][None, :] <= pos[0][:, None]  # Key position <= query position.
  np.testing.assert_array_equal(sym[0][:, visible], causal[0][:, visible])


def test_t5_relative_position_bucket_known_values():
  rel = np.array([0, -1, 1, -7, -8, -15, -16, -31, -32, -64, -127, -128, -1000, 8, 16, 128, 1000])
  # Bidirectional, 32 buckets, max distance 128: 16 per direction, exact below 8, then
  # 8 + floor(log(d/8) / log(16) * 8): d=15 -> 9, 16 -> 10, 31 -> 11, 32 -> 12, 64 -> 14, >=128 -> 15.
  # Keys after the query add 16.
  np.testing.assert_array_equal(
    positions.relative_position_bucket(rel),
    [0, 1, 17, 7, 8, 9, 10, 11, 12, 14, 15, 15, 15, 24, 26, 31, 31],
  )
  # Causal: all 32 for the past, exact below 16, then 16 + floor(log(d/16) / log(8) * 16):
  # d=31 -> 21, 32 -> 21, 64 -> 26, 127 -> 31; future keys -> 0.
  np.testing.assert_array_equal(
    positions.relative_position_bucket(rel, bidirectional=False),
    [0, 1, 0, 7, 8, 15, 16, 21, 21, 26, 31, 31, 31, 0, 0, 0, 0],
  )


def test_relative_position_bias_module():
  module = positions.RelativePositionBias(
    num_heads=3, num_buckets=8, max_distance=16, bidirectional=True
  )
  params = nn.unbox(module.init(jax.random.key(0), 4, 6))
  table = np.asarray(params["params"]["embedding"])
  assert table.shape == (8, 3)
  bias = np.asarray(module.apply(params, 4, 6))
  assert bias.shape == (1, 3, 4, 6)
  # 4 buckets per direction, exact below 2. Query 2, key 5: relative +3 -> upper half 4 +
  # (2 + floor(log(3/2) / log(16/2) * 2) = 2) = 6; query 0, key 5: +5 -> 4 + (2 + floor(0.88)) = 6;
  # query 3, key 0: -3 -> 2.
  np.testing.assert_allclose(bias[0, :, 2, 5], table[6])
  np.testing.assert_allclose(bias[0, :, 0, 5], table[6])
  np.testing.assert_allclose(bias[0, :, 3, 0], table[2])
  np.testing.assert_allclose(bias[0, :, 3, 3], table[0])
  # Per-example positions (packed segments) give a per-example bias.
  pos = np.array([[0, 1, 0, 1], [0, 1, 2, 3]])
  per_example = np.asarray(module.apply(params, 4, 4, q_positions=pos, kv_positions=pos))
  assert per_example.shape == (2, 3, 4, 4)
  np.testing.assert_allclose(per_example[0, :, 2, 3], table[5])  # Relative +1.
  np.testing.assert_allclose(per_example[0, :, 1, 2], table[1])  # Relative -1.
  np.testing.assert_allclose(per_example[1], bias[0, :, :, :4])
