"""The Pallas kernels in the interpreter on CPU, and the exact fallback of every kernel backend."""

import os
import sys

import jax
import numpy as np

from pretrain import sharding
from pretrain.models import attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  BATCH,
  L,
  PAD,
  SEGMENTS,
  assert_match,
  fast_jit,
  packed,
  qkv,
  reference_attention,
  reference_mask,
  run,
)


def check_kernel(backend, qkv_arrays, mask, ref_mask, rows, *, scale=None, logits_soft_cap=None):
  """The kernel's outputs and gradients match the reference on the rows that count, and it ran as requested."""
  fn = lambda q, k, v: attention.dot_product_attention(
    q,
    k,
    v,
    mask=mask,
    backend=backend,
    scale=scale,
    logits_soft_cap=logits_soft_cap,
    self_attention=True,
    interpret=True,
  )
  with attention.recording() as resolutions:
    got = run(fn, *qkv_arrays, rows)
  want = run(
    lambda q, k, v: reference_attention(q, k, v, ref_mask, scale=scale, soft_cap=logits_soft_cap),
    *qkv_arrays,
    rows,
  )
  assert_match(got, want, rows)
  assert resolutions == [(backend, backend, "requested")]
  return fn


def test_pallas_gpu_kernel_in_interpreter():
  pad = (SEGMENTS > 0).astype(np.int32)
  mask = attention.AttentionMask(causal=True, segment_ids=SEGMENTS, input_mask=pad)
  ref_mask = reference_mask(BATCH, L, L, causal=True, segment_ids=SEGMENTS, input_mask=pad)
  # Padding queries are rows nothing reads (the kernel lets them see the padding); the rest must match.
  check_kernel("pallas_gpu", qkv(3, L, L, kv_heads=2), mask, ref_mask, pad > 0, scale=0.3)

  # Bidirectional with padding only, multi-query; forward.
  q, k, v = qkv(4, L, L, kv_heads=1)
  out = fast_jit(
    lambda q, k, v: attention.dot_product_attention(
      q,
      k,
      v,
      mask=attention.AttentionMask(input_mask=PAD),
      backend="pallas_gpu",
      self_attention=True,
      interpret=True,
    )
  )(q, k, v)
  ref = reference_attention(q, k, v, reference_mask(BATCH, L, L, input_mask=PAD))
  np.testing.assert_allclose(np.asarray(out)[PAD > 0], np.asarray(ref)[PAD > 0], atol=2e-5)


def test_splash_tpu_kernel_in_interpreter():
  length = 128
  q, k, v = qkv(5, length, length, kv_heads=2)
  segments = np.stack([packed([50, 60], length), packed([128], length)])
  pad = (segments > 0).astype(np.int32)
  mask = attention.AttentionMask(
    causal=True, sliding_window=40, segment_ids=segments, input_mask=pad
  )
  ref_mask = reference_mask(
    BATCH, length, length, causal=True, window=40, segment_ids=segments, input_mask=pad
  )
  fn = check_kernel("splash_tpu", (q, k, v), mask, ref_mask, pad > 0, logits_soft_cap=3.0)
  jax.jit(fn).lower(q, k, v)  # The cached kernel serves another trace (its arrays are concrete).

  # A two-sided window with padding of the keys only (exact on every row), multi-query; forward.
  q, k, v = qkv(6, length, length, kv_heads=1)
  pad = np.array([[1] * length, [1] * 100 + [0] * 28])
  out = fast_jit(
    lambda q, k, v: attention.dot_product_attention(
      q,
      k,
      v,
      mask=attention.AttentionMask(sliding_window=50, input_mask=pad),
      backend="splash_tpu",
      interpret=True,
    )
  )(q, k, v)
  ref_mask = reference_mask(BATCH, length, length, window=50, input_mask=pad)
  np.testing.assert_allclose(out, reference_attention(q, k, v, ref_mask), atol=2e-5)


def test_kernel_backends_fall_back_to_xla_exactly():
  q, k, v = qkv(8, L, L)
  key = jax.random.key(3)
  xla = attention.dot_product_attention(
    q, k, v, dropout_rng=key, dropout_rate=0.5, deterministic=False
  )
  for backend in ("pallas_gpu", "splash_tpu", "dot_product_attention", "auto"):
    out = attention.dot_product_attention(
      q,
      k,
      v,
      dropout_rng=key,
      dropout_rate=0.5,
      deterministic=False,
      backend=backend,
      interpret=True,
    )
    np.testing.assert_array_equal(out, xla)
  # Without the interpreter a kernel on CPU is plain xla as well.
  mask = attention.AttentionMask(causal=True)
  np.testing.assert_array_equal(
    attention.dot_product_attention(q, k, v, mask=mask, backend="splash_tpu"),
    attention.dot_product_attention(q, k, v, mask=mask),
  )


def test_pallas_kernel_per_shard_of_a_mesh_matches_the_reference():
  """Under a mesh of 2 x 2 devices the kernel runs per shard (batch over data, heads over tensor)."""
  pad = (SEGMENTS > 0).astype(np.int32)
  mask = attention.AttentionMask(causal=True, segment_ids=SEGMENTS, input_mask=pad)
  ref_mask = reference_mask(BATCH, L, L, causal=True, segment_ids=SEGMENTS, input_mask=pad)
  mesh = jax.make_mesh((2, 2), ("data", "tensor"), devices=jax.devices()[:4])
  with sharding.mesh_context(mesh):
    check_kernel("pallas_gpu", qkv(9, L, L, kv_heads=2), mask, ref_mask, pad > 0)
