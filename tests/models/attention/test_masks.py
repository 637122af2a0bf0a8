"""AttentionMask: dense masks against the reference loops, validation, pytree."""

import os
import sys

import jax
import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  BATCH,
  CASES,
  DENSE,
  L,
  PAD,
  PREFIX,
  SEGMENTS,
  qkv,
  reference_mask,
)


@pytest.mark.parametrize("name", list(CASES))
def test_dense_mask_matches_reference_loops(name):
  mask_fields, ref_kwargs, _, _ = CASES[name]
  dense = attention.dense_mask(attention.AttentionMask(**mask_fields), L, L)
  assert dense.ndim == 4 and dense.shape[1] == 1
  want = reference_mask(BATCH, L, L, **ref_kwargs)
  np.testing.assert_array_equal(np.broadcast_to(dense, (BATCH, 1, L, L))[:, 0], want)


def test_dense_mask_combines_everything():
  dense = attention.dense_mask(
    attention.AttentionMask(
      causal=True,
      sliding_window=5,
      prefix_length=PREFIX,
      segment_ids=SEGMENTS,
      input_mask=PAD,
      dense=DENSE[:, None],
    ),
    L,
    L,
  )
  want = reference_mask(
    BATCH,
    L,
    L,
    causal=True,
    window=5,
    prefix=PREFIX,
    segment_ids=SEGMENTS,
    input_mask=PAD,
    dense=DENSE,
  )
  np.testing.assert_array_equal(dense[:, 0], want)
  assert (
    attention.dense_mask(None, 4, 4) is None
    and attention.dense_mask(attention.AttentionMask(), 4, 4) is None
  )
  plain = attention.padding_mask(PAD)
  assert attention.dense_mask(plain, L, L) is not None
  np.testing.assert_array_equal(attention.dense_mask(plain, L, L), plain)


def test_mask_rejects_bad_input():
  with pytest.raises(PretrainError, match="causal"):
    attention.AttentionMask(prefix_length=PREFIX)
  with pytest.raises(PretrainError, match="segment_ids"):
    attention.AttentionMask(kv_segment_ids=SEGMENTS)
  with pytest.raises(PretrainError, match="sliding_window"):
    attention.AttentionMask(sliding_window=0)
  q, k, v = qkv(0, L, L)
  with pytest.raises(PretrainError, match=r"input_mask has shape \(2, 8\)"):
    attention.dot_product_attention(q, k, v, mask=attention.AttentionMask(input_mask=PAD[:, :8]))
  with pytest.raises(PretrainError, match="kv_segment_ids"):
    attention.dot_product_attention(
      q, k[:, :8], v[:, :8], mask=attention.AttentionMask(segment_ids=SEGMENTS)
    )
  with pytest.raises(PretrainError, match="evenly"):
    attention.dot_product_attention(q, k[:, :, :3], v[:, :, :3])


def test_mask_passes_through_jit_as_a_pytree():
  mask = attention.AttentionMask(causal=True, sliding_window=3, segment_ids=SEGMENTS)
  leaves, treedef = jax.tree.flatten(mask)
  assert len(leaves) == 1
  again = jax.tree.unflatten(treedef, leaves)
  assert again.causal and again.sliding_window == 3
  dense = jax.jit(lambda m: attention.dense_mask(m, L, L))(mask)
  np.testing.assert_array_equal(
    dense[:, 0], reference_mask(BATCH, L, L, causal=True, window=3, segment_ids=SEGMENTS)
  )
