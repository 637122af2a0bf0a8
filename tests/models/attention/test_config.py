"""AttentionConfig: from a config section, its checks."""

import os
import sys

import pytest

from pretrain.errors import PretrainError
from pretrain.models import attention
from pretrain.models import positions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For attention_reference.py.
from attention_reference import (  # pylint: disable=g-import-not-at-top,wrong-import-position
  HEADS,
)


def test_attention_config_from_a_section():
  cfg = attention.AttentionConfig.from_dict(
    {
      "backend": "auto",
      "num_kv_heads": 2,
      "position": "rope",
      "rotary_fraction": 0.5,
      "qk_norm": "rmsnorm",
      "logits_soft_cap": 30.0,
      "sliding_window": 8,
    }
  )
  assert (
    cfg.num_kv_heads,
    cfg.position,
    cfg.rotary_fraction,
    cfg.qk_norm,
    cfg.logits_soft_cap,
    cfg.sliding_window,
    cfg.backend,
  ) == (2, "rope", 0.5, "rmsnorm", 30.0, 8, "auto")
  assert attention.AttentionConfig.from_dict(
    {"num_kv_heads": 0, "logits_soft_cap": 0, "sliding_window": 0}
  ) == (attention.AttentionConfig())
  t5 = attention.AttentionConfig(
    position="relative_bias", relative_num_buckets=16, relative_max_distance=64
  )
  assert t5.relative_position_bias(num_heads=HEADS, bidirectional=False, name="rel") == (
    positions.RelativePositionBias(HEADS, 16, 64, bidirectional=False, name="rel")
  )


def test_attention_config_rejects_bad_input():
  with pytest.raises(PretrainError, match="unknown AttentionConfig keys: num_kv_head"):
    attention.AttentionConfig.from_dict({"num_kv_head": 2})
  for kw, match in (
    (dict(backend="cudnn"), "unknown attention backend"),
    (dict(position="xpos"), "position"),
    (dict(qk_norm="l2"), "qk_norm"),
    (dict(num_kv_heads=0), "num_kv_heads"),
    (dict(logits_soft_cap=-1.0), "logits_soft_cap"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(rotary_fraction=1.5), "rotary_fraction"),
    (dict(rope_theta=0.0), "rope_theta"),
  ):
    with pytest.raises(PretrainError, match=match):
      attention.AttentionConfig(**kw)
  with pytest.raises(PretrainError, match="divisor of num_heads 4"):
    attention.AttentionConfig(num_kv_heads=3).check_heads(4)
