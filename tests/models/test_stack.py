"""The FLOP helpers' count of visible query-key pairs agrees with the masks attention applies."""

import numpy as np
import pytest

from pretrain.models import stack
from pretrain.models.attention import masks


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 1, 3, 16, 40])
@pytest.mark.parametrize("q_length,kv_length", [(16, 16), (7, 12), (12, 7)])
def test_visible_pairs_match_the_dense_mask(causal, window, q_length, kv_length):
  mask = masks.dense_mask(
    masks.AttentionMask(causal=causal, sliding_window=window), q_length, kv_length
  )
  expected = q_length * kv_length if mask is None else int(np.asarray(mask).sum())
  assert stack.visible_pairs(q_length, kv_length, causal=causal, window=window) == expected


def test_masked_attention_flops_are_the_hidden_pairs_of_both_matmuls():
  assert stack.masked_attention_flops(64, 16, 16) == 0
  # Causal hides 16 * 15 / 2 pairs; each costs q k^T and probs v over 64 features, 2 FLOPs a multiply-add.
  assert stack.masked_attention_flops(64, 16, 16, causal=True) == 2 * 2 * 64 * 120
  dense = stack.attention_flops(32, 64, 16, 16, 16)
  assert dense - stack.masked_attention_flops(64, 16, 16, causal=True) > dense // 2
