"""dot_product_attention: every variant x backend against the reference, cross-attention, soft-cap."""

import os
import sys

import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  BATCH,
  CASES,
  HEAD_DIM,
  L,
  SEGMENTS,
  assert_match,
  packed,
  qkv,
  reference_attention,
  reference_case,
  reference_mask,
  run,
)


@pytest.mark.parametrize("backend", ["xla", "dot_product_attention"])
def test_every_variant_matches_reference(backend):
  for name, (mask_fields, _, kv_heads, extra) in CASES.items():
    mask = attention.AttentionMask(**mask_fields)
    fn = lambda q, k, v, mask=mask, extra=extra: attention.dot_product_attention(
      q, k, v, mask=mask, backend=backend, self_attention=True, **extra
    )
    want, rows = reference_case(name)
    try:
      assert_match(run(fn, *qkv(1, L, L, kv_heads=kv_heads), rows), want, rows)
    except AssertionError as e:
      raise AssertionError(f"case {name}, backend {backend}") from e


def test_cross_attention_with_kv_segments_and_padding():
  q, k, v = qkv(2, 8, 12, kv_heads=2)
  q_seg = np.stack([packed([3, 5], 8), packed([8], 8)])
  kv_seg = np.stack([packed([7, 5], 12), packed([10], 12)])
  kv_pad = np.array([[1] * 12, [1] * 9 + [0] * 3])
  mask = attention.AttentionMask(segment_ids=q_seg, kv_segment_ids=kv_seg, input_mask=kv_pad)
  ref_mask = reference_mask(
    BATCH, 8, 12, segment_ids=q_seg, kv_segment_ids=kv_seg, input_mask=kv_pad
  )
  rows = ref_mask.any(-1)
  want = run(lambda q, k, v: reference_attention(q, k, v, ref_mask), q, k, v, rows)
  for backend in ("xla", "dot_product_attention"):
    assert_match(
      run(
        lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, backend=backend),
        q,
        k,
        v,
        rows,
      ),
      want,
      rows,
    )


def test_auto_on_cpu_is_xla_bit_for_bit():
  q, k, v = qkv(7, L, L, kv_heads=2)
  mask = attention.AttentionMask(causal=True, segment_ids=SEGMENTS)
  with attention.recording() as resolutions:
    outs = [
      attention.dot_product_attention(q, k, v, mask=mask, backend=b, self_attention=True)
      for b in ("xla", "auto")
    ]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert resolutions[-1] == ("auto", "xla", "auto on cpu: no fused kernel on cpu")


def test_soft_cap_bounds_the_logits():
  # Values are one-hot per key, so the output is the attention distribution itself.
  q, k, _ = qkv(9, 4, HEAD_DIM)
  q, k = 50 * q, 50 * k
  v = np.broadcast_to(np.eye(HEAD_DIM, dtype=np.float32)[None, :, None, :], k.shape)
  cap = 2.0
  probs = np.asarray(attention.dot_product_attention(q, k, v, logits_soft_cap=cap))  # [b, q, h, kv]
  log_ratio = np.log(probs.max(-1)) - np.log(probs.min(-1))
  assert log_ratio.max() <= 2 * cap + 1e-4
  assert log_ratio.max() > 1.5 * cap  # The cap binds: these logits are far beyond it.
  uncapped = np.asarray(attention.dot_product_attention(q, k, v))
  assert (np.log(uncapped.max(-1)) - np.log(np.maximum(uncapped.min(-1), 1e-38))).max() > 10 * cap
  with pytest.raises(PretrainError, match="logits_soft_cap"):
    attention.dot_product_attention(q, k, v, logits_soft_cap=0.0)
