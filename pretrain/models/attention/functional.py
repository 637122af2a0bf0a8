"""`dot_product_attention`: checks a call, resolves its backend once, records the decision and runs the kernel."""

from typing import Any

import jax
import jax.numpy as jnp

from pretrain.models import positions as positions_lib
from pretrain.models.attention import backends
from pretrain.models.attention import kernels
from pretrain.models.attention.config import check_heads
from pretrain.models.attention.config import check_soft_cap
from pretrain.models.attention.masks import AttentionMask
from pretrain.models.attention.masks import as_attention_mask
from pretrain.models.attention.masks import dense_mask

Array = jax.Array


def position_ids(
  mask: AttentionMask | None,
  q_length: int,
  kv_length: int,
  q_positions: Array | None,
  kv_positions: Array | None,
  self_attention: bool,
) -> tuple[Array, Array]:
  """Explicit ids, else per-segment positions of packed sequences, else 0..length-1."""
  if q_positions is None:
    if mask is not None and mask.segment_ids is not None:
      q_positions = positions_lib.segment_positions(mask.segment_ids)
    else:
      q_positions = positions_lib.default_positions(q_length)
  if kv_positions is None:
    if self_attention and q_length == kv_length:
      kv_positions = q_positions
    elif mask is not None and mask.kv_segment_ids is not None:
      kv_positions = positions_lib.segment_positions(mask.kv_segment_ids)
    else:
      kv_positions = positions_lib.default_positions(kv_length)
  return q_positions, kv_positions


def dot_product_attention(
  query: Array,
  key: Array,
  value: Array,
  *,
  bias: Array | None = None,
  mask: "Array | AttentionMask | None" = None,
  dropout_rng: Array | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = True,
  backend: str = "xla",
  dtype=jnp.float32,
  scale: float | None = None,
  logits_soft_cap: float | None = None,
  alibi_slopes: Any = None,
  q_positions: Array | None = None,
  kv_positions: Array | None = None,
  self_attention: bool = False,
  interpret: bool | None = None,
) -> Array:
  """softmax(cap(scale q k^T) + bias, masked) v -> float32 `[batch, q_length, heads, head_dim]`.

  Args:
    query: `[batch, q_length, heads, head_dim]`.
    key: `[batch, kv_length, kv_heads, head_dim]`; heads must be a multiple of kv_heads.
    value: `[batch, kv_length, kv_heads, head_dim]`.
    bias: float logits bias broadcastable to `[batch, heads, q_length, kv_length]`.
    mask: boolean array (same broadcasting; False positions get no weight) or AttentionMask.
    dropout_rng: PRNG key for attention-probability dropout.
    dropout_rate: probability of dropping an attention weight.
    deterministic: no dropout when True.
    backend: one of BACKENDS.
    dtype: matmul input dtype (accumulation is always float32).
    scale: logits scale; None is 1/sqrt(head_dim) (T5 uses 1.0, folding it into the init).
    logits_soft_cap: cap * tanh(logits / cap) on the scaled logits, before bias and mask.
    alibi_slopes: `[heads]` ALiBi slopes; adds -slope * |q_position - kv_position|.
    q_positions: int `[batch or 1, q_length]` ids for ALiBi; default: per-segment positions when
      the mask has segment ids, else 0..q_length-1.
    kv_positions: int `[batch or 1, kv_length]`.
    self_attention: queries and keys are one sequence (lets padding reach kernels as segment ids).
    interpret: run Pallas kernels in the interpreter; None reads PRETRAIN_ATTENTION_INTERPRET.
  """
  backends.check_backend(backend)
  batch, q_length, num_heads, head_dim = query.shape
  kv_length, num_kv_heads = key.shape[1], key.shape[2]
  check_heads(num_heads, num_kv_heads)
  check_soft_cap(logits_soft_cap)
  scale = head_dim**-0.5 if scale is None else float(scale)
  interpret = backends.interpret_default() if interpret is None else bool(interpret)
  structured = as_attention_mask(mask)
  if structured is not None:
    structured.validate(batch, q_length, kv_length)
  features = backends.AttentionFeatures.of_mask(
    structured,
    dropout=not deterministic and dropout_rate > 0.0,
    bias=bias is not None,
    alibi=alibi_slopes is not None,
    soft_cap=logits_soft_cap is not None,
    self_attention=self_attention,
    grouped=num_kv_heads < num_heads,
    dtype=jnp.dtype(dtype).name,
    q_length=q_length,
    kv_length=kv_length,
  )

  def run(resolved: str, use_cudnn: bool) -> Array:
    """The resolved backend's kernel on this call."""
    logits_bias = bias
    if resolved == "pallas_gpu":
      kernel = lambda q, k, v, m: kernels.pallas_gpu_attention(
        q, k, v, m, dtype, scale, interpret, self_attention
      )
      return kernels.per_shard(kernel, query, key, value, structured)
    if resolved == "splash_tpu":
      kernel = lambda q, k, v, m: kernels.splash_attention(
        q, k, v, m, dtype, scale, logits_soft_cap, interpret, self_attention
      )
      return kernels.per_shard(kernel, query, key, value, structured)
    if alibi_slopes is not None:
      positions = position_ids(
        structured, q_length, kv_length, q_positions, kv_positions, self_attention
      )
      alibi = positions_lib.alibi_bias(alibi_slopes, *positions)  # [batch or 1, heads, q, kv]
      logits_bias = alibi if bias is None else bias + alibi
    if resolved == "dot_product_attention":
      return kernels.jax_nn_attention(
        query, key, value, logits_bias, structured, dtype, scale, use_cudnn
      )
    return kernels.xla_attention(
      query,
      key,
      value,
      logits_bias,
      dense_mask(structured, q_length, kv_length),
      dropout_rng,
      dropout_rate,
      deterministic,
      dtype,
      scale,
      logits_soft_cap,
    )

  platform = backends.target_platform()
  unavailable: dict[str, str] = {}  # Kernels that refused this call while traced: resolve again.
  while True:
    resolved, reason = backends.resolve_backend(
      backend, features, platform, interpret=interpret, unavailable=unavailable
    )
    try:
      out = run(resolved, backends.cudnn_missing(features, platform, unavailable) is None)
    except kernels.KernelUnavailable as e:
      unavailable[resolved] = str(e)
      continue
    backends.record(backend, resolved, reason)
    return out
