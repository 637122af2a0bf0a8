"""Masks as structure: which keys each query may see.

Kernel backends read the structure (causal, window, segment ids) and skip the
masked blocks; 'xla' materializes it with `dense_mask`. A dense `mask` array is
boolean (True = may attend) and broadcasts to `[batch, heads, q_length, kv_length]`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError

Array = jax.Array


def check_sliding_window(window: int | None) -> None:
  """Raises PretrainError unless window is None or >= 1 (the config's and the mask's one check)."""
  if window is not None and int(window) < 1:
    raise PretrainError(f"sliding_window {window} must be >= 1 (or None)")


def padding_mask(input_mask: Array) -> Array:
  """`[batch, length]` (1 = real token) -> boolean `[batch, 1, 1, kv_length]`."""
  return input_mask[:, None, None, :].astype(jnp.bool_)


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["prefix_length", "segment_ids", "kv_segment_ids", "input_mask", "dense"],
  meta_fields=["causal", "sliding_window"],
)
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Which keys each query may see; every constraint given is ANDed.

  Positions are indices into the (q or kv) sequence, aligned at index 0.

  Attributes:
    causal: key index <= query index.
    sliding_window: |query index - key index| < sliding_window (with causal,
      the last sliding_window keys up to and including the query).
    prefix_length: int `[batch]`, prefix-LM (needs causal): keys inside the
      first prefix_length positions are visible to every query, so the prefix
      attends bidirectionally and the rest causally.
    segment_ids: int `[batch, q_length]`, packed sequences: a query sees only
      keys of the same (non-negative) id. Padding as id 0 then keeps real
      tokens off the padding by itself.
    kv_segment_ids: int `[batch, kv_length]`; None: segment_ids (self-attention).
    input_mask: `[batch, kv_length]`, 1 = real key token; padding keys are hidden.
    dense: any boolean mask broadcastable to `[batch, heads, q_length, kv_length]`.
  """

  causal: bool = False
  sliding_window: int | None = None
  prefix_length: Array | None = None
  segment_ids: Array | None = None
  kv_segment_ids: Array | None = None
  input_mask: Array | None = None
  dense: Array | None = None

  def __post_init__(self):
    check_sliding_window(self.sliding_window)
    if self.prefix_length is not None and not self.causal:
      raise PretrainError(
        "prefix_length (prefix-LM) needs causal=True: it opens the prefix of a causal mask"
      )
    if self.kv_segment_ids is not None and self.segment_ids is None:
      raise PretrainError("kv_segment_ids needs segment_ids for the queries")

  def validate(self, batch: int, q_length: int, kv_length: int) -> None:
    """Raises PretrainError when an array does not fit the attention's shapes."""
    expected = {
      "prefix_length": (batch,),
      "segment_ids": (batch, q_length),
      "kv_segment_ids": (batch, kv_length),
      "input_mask": (batch, kv_length),
    }
    if self.segment_ids is not None and self.kv_segment_ids is None and q_length != kv_length:
      raise PretrainError(
        f"segment_ids alone need q_length == kv_length (got {q_length} and {kv_length}); "
        "give kv_segment_ids for cross-attention"
      )
    for name, shape in expected.items():
      value = getattr(self, name)
      if value is not None and tuple(value.shape) != shape:
        raise PretrainError(
          f"AttentionMask.{name} has shape {tuple(value.shape)}, expected {shape}"
        )
    if self.dense is not None and self.dense.ndim > 4:
      raise PretrainError(
        f"AttentionMask.dense must broadcast to [batch, heads, q, kv], got shape {self.dense.shape}"
      )


def as_attention_mask(mask: "Array | AttentionMask | None") -> AttentionMask | None:
  """A dense mask array becomes AttentionMask(dense=mask); None and AttentionMask pass through."""
  if mask is None or isinstance(mask, AttentionMask):
    return mask
  return AttentionMask(dense=mask)


def dense_mask(mask: "Array | AttentionMask | None", q_length: int, kv_length: int) -> Array | None:
  """The boolean `[batch or 1, heads or 1, q_length, kv_length]` of a mask; None when nothing is masked."""
  mask = as_attention_mask(mask)
  if mask is None:
    return None
  q = np.arange(q_length)[:, None]
  k = np.arange(kv_length)[None, :]
  parts = []  # Each [batch or 1, 1, q or 1, kv] (or the dense mask's own shape).
  if mask.causal:
    causal = jnp.asarray(k <= q)[None]  # [1, q_length, kv_length]
    if mask.prefix_length is not None:
      causal = causal | (
        k[None] < mask.prefix_length[:, None, None]
      )  # [batch, q_length, kv_length]
    parts.append(causal[:, None])
  if mask.sliding_window is not None:
    parts.append(jnp.asarray(np.abs(q - k) < mask.sliding_window)[None, None])
  if mask.segment_ids is not None:
    kv_segment_ids = mask.segment_ids if mask.kv_segment_ids is None else mask.kv_segment_ids
    parts.append((mask.segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None])
  if mask.input_mask is not None:
    parts.append(padding_mask(mask.input_mask))
  if mask.dense is not None:
    dense = mask.dense.astype(jnp.bool_)
    parts.append(dense.reshape((1,) * (4 - dense.ndim) + dense.shape))
  if not parts:
    return None
  return functools.reduce(jnp.logical_and, parts)


def with_sliding_window(mask: "Array | AttentionMask | None", window: int | None):
  """mask ANDed with a sliding window (the narrower one wins)."""
  if window is None:
    return mask
  mask = as_attention_mask(mask) or AttentionMask()
  if mask.sliding_window is not None:
    window = min(window, mask.sliding_window)
  return dataclasses.replace(mask, sliding_window=window)
