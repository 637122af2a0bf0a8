"""The reference every attention test compares with: explicit loops for the mask, repeated key/value heads,
plain einsums; and the shared inputs (padding, packed segments, prefix, dense masks, biases)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.models import positions

BATCH, HEADS, HEAD_DIM, EMBED = 2, 4, 8, 32
# Tiny graphs compile ~3x faster unoptimized; numerics are compared with tolerances anyway.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# The reference: explicit loops for the mask, repeated key/value heads, plain einsums.


def reference_mask(
  batch,
  q_length,
  kv_length,
  *,
  causal=False,
  window=None,
  prefix=None,
  segment_ids=None,
  kv_segment_ids=None,
  input_mask=None,
  dense=None,
):
  """bool [batch, q_length, kv_length], one element at a time."""
  if segment_ids is not None and kv_segment_ids is None:
    kv_segment_ids = segment_ids
  m = np.ones((batch, q_length, kv_length), bool)
  for b in range(batch):
    for i in range(q_length):
      for j in range(kv_length):
        ok = True
        if causal:
          ok &= j <= i or (prefix is not None and j < prefix[b])
        if window is not None:
          ok &= abs(i - j) < window
        if segment_ids is not None:
          ok &= segment_ids[b, i] == kv_segment_ids[b, j]
        if input_mask is not None:
          ok &= bool(input_mask[b, j])
        if dense is not None:
          ok &= bool(dense[b, i, j])
        m[b, i, j] = ok
  return m


def reference_attention(q, k, v, mask, *, bias=None, scale=None, soft_cap=None):
  """q [b, q, h, d], k/v [b, kv, kv_heads, d], mask bool [b, q, kv] -> [b, q, h, d]."""
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * scale
  if soft_cap is not None:
    logits = soft_cap * jnp.tanh(logits / soft_cap)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask[:, None], logits, -1e30)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def qkv(seed, q_length, kv_length, heads=HEADS, kv_heads=HEADS, head_dim=HEAD_DIM):
  rng = np.random.default_rng(seed)
  return tuple(
    rng.normal(size=(BATCH, n, h, head_dim)).astype(np.float32)
    for n, h in ((q_length, heads), (kv_length, kv_heads), (kv_length, kv_heads))
  )


def packed(lengths, total):
  """Segment ids 1, 2, ... for consecutive sequences of `lengths`, padding (0) after."""
  ids = np.zeros(total, np.int32)
  start = 0
  for n, length in enumerate(lengths):
    ids[start : start + length] = n + 1
    start += length
  return ids


def outputs_and_grads(fn, q, k, v, rows):
  """fn(q, k, v) and d/d(q, k, v) of a random projection of the rows that count (bool [batch, q_length])."""
  weights = (
    np.random.default_rng(99).normal(size=q.shape).astype(np.float32) * rows[:, :, None, None]
  )

  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * weights), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


def run(fn, q, k, v, rows):
  return fast_jit(lambda q, k, v: outputs_and_grads(fn, q, k, v, rows))(q, k, v)


def assert_match(got, want, rows, atol=2e-5):
  """(out, grads) pairs agree: outputs on the rows that count, gradients everywhere; all finite."""
  (out, grads), (ref, ref_grads) = got, want
  assert all(np.isfinite(np.asarray(x)).all() for x in (out, *grads))
  np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=atol, rtol=1e-4)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=atol, rtol=1e-4)


# Every variant x backend.

L = 16
PAD = np.array([[1] * L, [1] * 11 + [0] * 5], np.int32)
SEGMENTS = np.stack(
  [packed([5, 7, 4], L), packed([6, 6], L)]
)  # Second row: 4 padding tokens (id 0).
PREFIX = np.array([4, 9], np.int32)
_rng = np.random.default_rng(0)
DENSE = _rng.random((BATCH, L, L)) < 0.7
DENSE[:, np.arange(L), np.arange(L)] = True
BIAS = _rng.normal(size=(BATCH, HEADS, L, L)).astype(np.float32)

# name: (AttentionMask fields, reference_mask kwargs, kv_heads, extra dot_product_attention kwargs)
CASES = {
  "padding": (dict(input_mask=PAD), dict(input_mask=PAD), HEADS, {}),
  "causal_padding_mqa": (
    dict(causal=True, input_mask=PAD),
    dict(causal=True, input_mask=PAD),
    1,
    {},
  ),
  "packed_causal_gqa": (
    dict(causal=True, segment_ids=SEGMENTS),
    dict(causal=True, segment_ids=SEGMENTS),
    2,
    {},
  ),
  "window_padding": (
    dict(sliding_window=3, input_mask=PAD),
    dict(window=3, input_mask=PAD),
    HEADS,
    {},
  ),
  "causal_window_gqa": (dict(causal=True, sliding_window=4), dict(causal=True, window=4), 2, {}),
  "prefix_lm_padding": (
    dict(causal=True, prefix_length=PREFIX, input_mask=PAD),
    dict(causal=True, prefix=PREFIX, input_mask=PAD),
    HEADS,
    {},
  ),
  "dense_and_causal": (
    dict(causal=True, dense=DENSE[:, None]),
    dict(causal=True, dense=DENSE),
    HEADS,
    {},
  ),
  "bias_soft_cap_gqa": (
    dict(input_mask=PAD),
    dict(input_mask=PAD),
    2,
    dict(bias=BIAS, logits_soft_cap=2.0),
  ),
  "alibi_packed": (
    dict(causal=True, segment_ids=SEGMENTS),
    dict(causal=True, segment_ids=SEGMENTS),
    HEADS,
    dict(alibi_slopes=positions.alibi_slopes(HEADS)),
  ),
}


def alibi_reference_bias(segment_ids):
  """-slope * |i - j| with i, j counted from each segment's start, in numpy."""
  pos = np.zeros(segment_ids.shape, np.int64)
  for b, row in enumerate(segment_ids):
    for i in range(1, len(row)):
      pos[b, i] = pos[b, i - 1] + 1 if row[i] == row[i - 1] else 0
  distance = np.abs(pos[:, :, None] - pos[:, None, :])  # [batch, q, kv]
  return (-positions.alibi_slopes(HEADS)[None, :, None, None] * distance[:, None]).astype(
    np.float32
  )


@functools.lru_cache(maxsize=None)
def reference_case(name):
  """((out, grads), rows) of the reference for CASES[name]."""
  _, ref_kwargs, kv_heads, extra = CASES[name]
  ref_mask = reference_mask(BATCH, L, L, **ref_kwargs)
  bias = alibi_reference_bias(SEGMENTS) if "alibi_slopes" in extra else extra.get("bias")
  fn = lambda q, k, v: reference_attention(
    q, k, v, ref_mask, bias=bias, soft_cap=extra.get("logits_soft_cap")
  )
  rows = ref_mask.any(-1)
  return run(fn, *qkv(1, L, L, kv_heads=kv_heads), rows), rows


# Module helpers.


def module_params(module, x, **kwargs):
  return nn.unbox(module.init(jax.random.key(1), x, **kwargs)["params"])


def shapes(params):
  return {
    "/".join(k.key for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }


X = np.random.default_rng(3).normal(size=(BATCH, L, EMBED)).astype(np.float32)
