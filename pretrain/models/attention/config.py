"""The attention variant of a model as one frozen config, checked once, and the family config reader."""

import dataclasses
from typing import Any

from pretrain.errors import PretrainError
from pretrain.models import layers
from pretrain.models import positions as positions_lib
from pretrain.models.attention.backends import check_backend
from pretrain.models.attention.masks import check_sliding_window

QK_NORMS = ("none", "layernorm", "rmsnorm")
_ZERO_IS_NONE = ("num_kv_heads", "logits_soft_cap", "sliding_window")


def check_heads(num_heads: int, num_kv_heads: int | None) -> None:
  """Raises PretrainError unless num_kv_heads (None: num_heads) divides num_heads."""
  if num_kv_heads is not None and (num_kv_heads < 1 or num_heads % num_kv_heads):
    raise PretrainError(
      f"num_kv_heads {num_kv_heads} must be a positive divisor of num_heads {num_heads} "
      "(query heads share key/value heads evenly)"
    )


def check_soft_cap(logits_soft_cap: float | None) -> None:
  if logits_soft_cap is not None and logits_soft_cap <= 0:
    raise PretrainError(f"logits_soft_cap {logits_soft_cap} must be positive (or None)")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """The attention variant of a model; an ablation changes these fields only.

  MultiHeadAttention holds one; families keep their own sizes (heads,
  head_dim), dtype, dropout and init. `position` also tells the family whether
  to add learned/sinusoidal embeddings or a T5 relative bias itself.

  Attributes:
    backend: which implementation computes softmax(q k^T) v (see backends.py).
    num_kv_heads: None = num_heads (MHA), 1 = multi-query, a divisor of
      num_heads = grouped-query (GQA). Query head h reads key/value head
      h // (num_heads / num_kv_heads).
    position: 'rope' rotates q and k after the projections, 'alibi' adds
      ALiBi's bias to the logits; 'learned', 'sinusoidal' and 'relative_bias'
      belong to the family (see positions.py).
    rope_theta, rotary_fraction: RoPE's base and the share of head_dim it rotates.
    relative_num_buckets, relative_max_distance: position='relative_bias' (T5).
    qk_norm: 'layernorm' | 'rmsnorm' over head_dim of q and k.
    logits_soft_cap: cap * tanh(logits / cap), on the scaled q.k.
    sliding_window: ANDed into every mask of the module.
    interpret: run the Pallas kernels in the interpreter; None reads
      PRETRAIN_ATTENTION_INTERPRET.
  """

  backend: str = "xla"
  num_kv_heads: int | None = None
  position: str = "none"
  rope_theta: float = 10000.0
  rotary_fraction: float = 1.0
  relative_num_buckets: int = 32
  relative_max_distance: int = 128
  qk_norm: str = "none"
  logits_soft_cap: float | None = None
  sliding_window: int | None = None
  interpret: bool | None = None

  def __post_init__(self):
    check_backend(self.backend)
    if self.num_kv_heads is not None and self.num_kv_heads < 1:
      raise PretrainError(f"num_kv_heads {self.num_kv_heads} must be positive (or None)")
    positions_lib.check_position(self.position)
    if self.qk_norm not in QK_NORMS:
      raise PretrainError(f"unknown qk_norm {self.qk_norm!r}; valid: {', '.join(QK_NORMS)}")
    check_soft_cap(self.logits_soft_cap)
    check_sliding_window(self.sliding_window)
    if not 0.0 < self.rotary_fraction <= 1.0:
      raise PretrainError(f"rotary_fraction {self.rotary_fraction} must be in (0, 1]")
    if self.rope_theta <= 0:
      raise PretrainError(f"rope_theta {self.rope_theta} must be positive")
    if self.relative_num_buckets < 4 or self.relative_max_distance < 1:
      raise PretrainError(
        f"relative_num_buckets {self.relative_num_buckets} must be >= 4 and "
        f"relative_max_distance {self.relative_max_distance} >= 1"
      )

  @classmethod
  def from_dict(cls, d: Any) -> "AttentionConfig":
    """From a config section; 0 stands for None in num_kv_heads, logits_soft_cap and sliding_window.

    (Command-line overrides cannot change a None field's type, so configs write 0.)
    """
    d = dict(d)
    layers.check_config_keys(cls, d)
    for name in _ZERO_IS_NONE:
      if d.get(name) == 0:
        d[name] = None
    return cls(**d)

  def check_heads(self, num_heads: int) -> None:
    """Raises PretrainError unless num_kv_heads divides num_heads."""
    check_heads(num_heads, self.num_kv_heads)

  def relative_position_bias(
    self, *, num_heads: int, bidirectional: bool, name: str | None = None
  ) -> positions_lib.RelativePositionBias:
    """T5's relative bias module of this config (position='relative_bias'); build one per stack."""
    return positions_lib.RelativePositionBias(
      num_heads=num_heads,
      num_buckets=self.relative_num_buckets,
      max_distance=self.relative_max_distance,
      bidirectional=bidirectional,
      name=name,
    )


def model_config_from_dict(cls, d: Any):
  """A family's config dataclass `cls` from a config section, its `attention` section included."""
  layers.check_config_keys(cls, d)
  if not isinstance(d.get("attention", AttentionConfig()), AttentionConfig):
    d = dict(d, attention=AttentionConfig.from_dict(d["attention"]))
  return cls(**d)
