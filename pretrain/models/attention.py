"""Multi-head attention, the one attention module every model family uses.

Every variant is a field of `AttentionConfig` (and of `MultiHeadAttention`):

  heads        num_kv_heads: None = num_heads (MHA), 1 = multi-query, a divisor
               of num_heads = grouped-query (GQA). Query head h reads key/value
               head h // (num_heads / num_kv_heads).
  positions    position: 'rope' rotates q and k after the projections, 'alibi'
               adds ALiBi's bias to the logits; 'learned', 'sinusoidal' and
               'relative_bias' belong to the family (see positions.py).
  masks        `AttentionMask`: causal, sliding window, prefix-LM, packed segment
               ids, padding and any dense boolean mask, ANDed together.
  stabilizers  qk_norm ('layernorm' | 'rmsnorm' over head_dim of q and k);
               logits_soft_cap (cap * tanh(logits / cap), on the scaled q.k).
  backend      which implementation computes softmax(q k^T) v, below.

Backends (`resolve_backend` picks one per call, at trace time):

  'xla'                    einsums written out here; softmax in float32; runs
                           anywhere and supports every variant and dropout.
  'dot_product_attention'  `jax.nn.dot_product_attention`: cuDNN's fused kernel
                           on GPU with bfloat16/float16 compute, that API's XLA
                           implementation elsewhere. No dropout, no soft-cap.
  'pallas_gpu'             Pallas flash attention for GPUs (Triton); causal,
                           packed segments and padding of self-attention.
  'splash_tpu'             Pallas splash attention for TPUs; causal, sliding
                           window, segments, padding and soft-cap.
  'auto'                   the fastest of those that supports the call on this
                           platform: splash_tpu on TPU; on GPU cuDNN (bfloat16/
                           float16) or else pallas_gpu; xla otherwise.

A backend that cannot express the call (dropout, an additive bias, ALiBi, a
dense mask, prefix-LM, an unsupported length, the wrong platform) falls back to
'xla'; each fallback is logged once with its reason, and every decision is
recorded for `resolved_backends()`. The Pallas kernels also run on CPU through
the Pallas interpreter when `interpret` is on (the field, or the environment
variable PRETRAIN_ATTENTION_INTERPRET=1); that is for tests, and slow.

Layout: queries/keys/values are `[batch, length, heads, head_dim]`, the layout
of `jax.nn.dot_product_attention` and a free reshape of the projections.
A dense `mask` is boolean (True = may attend), `bias` is added to the logits;
both broadcast to `[batch, heads, q_length, kv_length]`. A query row that may
attend to nothing has an unspecified (finite) output, and so has a padding
query's row under the Pallas kernels (they let padding see padding); losses
must ignore both.
"""
import dataclasses
import functools
import logging
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import layers
from pretrain.models import positions as positions_lib

Array = jax.Array

BACKENDS = ('xla', 'dot_product_attention', 'pallas_gpu', 'splash_tpu', 'auto')
QK_NORMS = ('none', 'layernorm', 'rmsnorm')
INTERPRET_ENV = 'PRETRAIN_ATTENTION_INTERPRET'

_logger = logging.getLogger(__name__)
_logged_fallbacks = set()


def _log_once(message: str) -> None:
  if message not in _logged_fallbacks:
    _logged_fallbacks.add(message)
    _logger.warning(message)


def check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise PretrainError(f'unknown attention backend {backend!r}; valid: {", ".join(BACKENDS)}')


def interpret_default() -> bool:
  """Whether PRETRAIN_ATTENTION_INTERPRET asks for the Pallas interpreter."""
  return os.environ.get(INTERPRET_ENV, '').strip().lower() in ('1', 'true', 'yes')


def padding_mask(input_mask: Array) -> Array:
  """`[batch, length]` (1 = real token) -> boolean `[batch, 1, 1, kv_length]`."""
  return input_mask[:, None, None, :].astype(jnp.bool_)


# Masks as structure.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=['prefix_length', 'segment_ids', 'kv_segment_ids', 'input_mask', 'dense'],
    meta_fields=['causal', 'sliding_window'])
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Which keys each query may see; every constraint given is ANDed.

  Positions are indices into the (q or kv) sequence, aligned at index 0.
  Kernel backends read the structure; 'xla' materializes it with `dense_mask`.

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
    if self.sliding_window is not None and int(self.sliding_window) < 1:
      raise PretrainError(f'sliding_window {self.sliding_window} must be >= 1')
    if self.prefix_length is not None and not self.causal:
      raise PretrainError('prefix_length (prefix-LM) needs causal=True: it opens the prefix of a causal mask')
    if self.kv_segment_ids is not None and self.segment_ids is None:
      raise PretrainError('kv_segment_ids needs segment_ids for the queries')

  def validate(self, batch: int, q_length: int, kv_length: int) -> None:
    """Raises PretrainError when an array does not fit the attention's shapes."""
    expected = {
        'prefix_length': (batch,),
        'segment_ids': (batch, q_length),
        'kv_segment_ids': (batch, kv_length),
        'input_mask': (batch, kv_length),
    }
    if self.segment_ids is not None and self.kv_segment_ids is None and q_length != kv_length:
      raise PretrainError(f'segment_ids alone need q_length == kv_length (got {q_length} and {kv_length}); '
                          'give kv_segment_ids for cross-attention')
    for name, shape in expected.items():
      value = getattr(self, name)
      if value is not None and tuple(value.shape) != shape:
        raise PretrainError(f'AttentionMask.{name} has shape {tuple(value.shape)}, expected {shape}')
    if self.dense is not None and self.dense.ndim > 4:
      raise PretrainError(f'AttentionMask.dense must broadcast to [batch, heads, q, kv], got shape {self.dense.shape}')


def as_attention_mask(mask: 'Array | AttentionMask | None') -> AttentionMask | None:
  """A dense mask array becomes AttentionMask(dense=mask); None and AttentionMask pass through."""
  if mask is None or isinstance(mask, AttentionMask):
    return mask
  return AttentionMask(dense=mask)


def dense_mask(mask: 'Array | AttentionMask | None', q_length: int, kv_length: int) -> Array | None:
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
      causal = causal | (k[None] < mask.prefix_length[:, None, None])  # [batch, q_length, kv_length]
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


def _with_sliding_window(mask: 'Array | AttentionMask | None', window: int | None):
  """mask ANDed with a sliding window (the narrower one wins)."""
  if window is None:
    return mask
  mask = as_attention_mask(mask) or AttentionMask()
  if mask.sliding_window is not None:
    window = min(window, mask.sliding_window)
  return dataclasses.replace(mask, sliding_window=window)


# Choosing a backend.


@dataclasses.dataclass(frozen=True)
class AttentionFeatures:
  """What one attention call needs, as far as choosing a backend goes."""
  dropout: bool = False  # Active attention-probability dropout.
  bias: bool = False  # An arbitrary additive logits bias (e.g. T5's relative bias).
  alibi: bool = False
  soft_cap: bool = False
  dense_mask: bool = False  # An arbitrary boolean mask array.
  causal: bool = False
  sliding_window: bool = False
  prefix: bool = False  # Per-example prefix-LM.
  segments: bool = False  # Packed segment ids.
  kv_segments: bool = False  # Separate key segment ids (cross-attention).
  padding: bool = False  # An input mask on the keys.
  self_attention: bool = True  # Queries and keys are the same sequence.
  grouped: bool = False  # num_kv_heads < num_heads.
  dtype: str = 'float32'  # Matmul compute dtype.
  q_length: int | None = None  # None: unknown, assumed to fit every kernel.
  kv_length: int | None = None


class Resolution(NamedTuple):
  requested: str
  backend: str
  reason: str


def _pallas_gpu_length_ok(n: int) -> bool:
  # Forward blocks are min(128, n) long, backward blocks min(32, n).
  return n <= 32 or (n <= 128 and n % 32 == 0) or n % 128 == 0


def _unsupported(backend: str, f: AttentionFeatures, platform: str, interpret: bool) -> str | None:
  """Why `backend` cannot compute a call with features f on platform; None when it can."""
  if backend == 'xla':
    return None
  if f.dropout:
    return 'has no attention dropout'
  if backend == 'dot_product_attention':
    if f.soft_cap:
      return 'has no logits soft-cap'
    return None
  kernel_platform = {'pallas_gpu': 'gpu', 'splash_tpu': 'tpu'}[backend]
  if platform != kernel_platform and not interpret:
    return (f'needs a {kernel_platform.upper()} (platform is {platform}; the Pallas interpreter runs it '
            f'anywhere with {INTERPRET_ENV}=1)')
  common = (
      (f.bias, 'takes no additive logits bias'),
      (f.alibi, 'has no ALiBi bias'),
      (f.dense_mask, 'takes no dense mask array'),
      (f.prefix, 'has no per-example prefix-LM mask'),
  )
  for unsupported, why in common:
    if unsupported:
      return why
  lengths = [n for n in (f.q_length, f.kv_length) if n is not None]
  if backend == 'pallas_gpu':
    if f.soft_cap:
      return 'has no logits soft-cap'
    if f.sliding_window:
      return 'has no sliding window'
    if f.kv_segments:
      return 'shares one segment-id array between queries and keys (no kv_segment_ids)'
    if f.padding and not f.self_attention:
      return 'expresses padding through shared segment ids, which only fits self-attention'
    if f.q_length is not None and f.kv_length is not None and f.q_length != f.kv_length:
      return f'needs q_length == kv_length (got {f.q_length} and {f.kv_length})'
    if not all(_pallas_gpu_length_ok(n) for n in lengths):
      return f'needs lengths <= 32, multiples of 32 up to 128, or multiples of 128 (got {lengths})'
    return None
  if not all(n % 128 == 0 for n in lengths):  # splash_tpu
    return f'needs lengths that are multiples of 128 (got {lengths})'
  return None


def resolve_backend(requested: str, features: AttentionFeatures, platform: str, *,
                    interpret: bool = False) -> tuple[str, str]:
  """(backend, reason): the backend that computes a call with `features` on `platform`.

  Pure: decides from its arguments only. `platform` is jax.default_backend()
  ('cpu', 'gpu', 'tpu'); `interpret` lets the Pallas kernels run anywhere.
  """
  check_backend(requested)
  if requested == 'xla':
    return 'xla', 'requested'
  if requested != 'auto':
    why = _unsupported(requested, features, platform, interpret)
    if why is not None:
      return 'xla', f'{requested} {why}'
    if requested == 'dot_product_attention':
      if platform != 'gpu':
        return requested, f'requested; no cuDNN on {platform}, so jax.nn.dot_product_attention runs its XLA version'
      if features.dtype not in ('bfloat16', 'float16'):
        return requested, (f'requested; cuDNN needs bfloat16/float16 compute, not {features.dtype}, so '
                           'jax.nn.dot_product_attention runs its XLA version')
    return requested, 'requested'
  candidates = {'tpu': ('splash_tpu',), 'gpu': ('dot_product_attention', 'pallas_gpu')}.get(platform, ())
  reasons = []
  for candidate in candidates:
    if candidate == 'dot_product_attention' and features.dtype not in ('bfloat16', 'float16'):
      reasons.append(f'cuDNN needs bfloat16/float16 compute, not {features.dtype}')
      continue
    why = _unsupported(candidate, features, platform, interpret)
    if why is None:
      return candidate, f'auto on {platform}'
    reasons.append(f'{candidate} {why}')
  if not candidates:
    reasons.append(f'no fused kernel on {platform}')
  return 'xla', f'auto on {platform}: ' + '; '.join(reasons)


_resolutions: dict[tuple[str, str, str], None] = {}


def resolved_backends() -> list[Resolution]:
  """Every (requested, backend, reason) decided since the last clear, in order (recorded at trace time)."""
  return [Resolution(*r) for r in _resolutions]


def clear_resolved_backends() -> None:
  _resolutions.clear()


def _record(requested: str, backend: str, reason: str) -> None:
  key = (requested, backend, reason)
  if key not in _resolutions:
    _resolutions[key] = None
    if requested == 'auto':
      _logger.info('attention backend auto -> %s (%s)', backend, reason)
    elif reason != 'requested':
      _log_once(f'attention backend {requested} -> {backend}: {reason}')


# Backends.


def _xla_attention(query, key, value, bias, mask, dropout_rng, dropout_rate, deterministic, dtype, scale,
                   soft_cap):
  batch, q_length, num_heads, head_dim = query.shape
  kv_length, num_kv_heads = key.shape[1], key.shape[2]
  groups = num_heads // num_kv_heads
  # Scaling q costs length*head_dim multiplies per head instead of length**2.
  if scale != 1.0:
    query = query * jnp.asarray(scale, query.dtype)
  # Heads-major copies make both matmuls plain batched matmuls; XLA:CPU runs
  # this ~25% faster (fwd+bwd) than the einsums over [batch, length, heads, head_dim].
  query, key, value = (jnp.swapaxes(x, 1, 2).astype(dtype) for x in (query, key, value))
  if groups == 1:
    logits = jnp.einsum(
        'bhqd,bhkd->bhqk', query, key, preferred_element_type=jnp.float32)  # [batch, heads, q_length, kv_length]
  else:
    # Grouped heads: query head h = kv_head * groups + g reads key/value head kv_head.
    query = query.reshape(batch, num_kv_heads, groups, q_length, head_dim)  # [batch, kv_heads, groups, q, d]
    logits = jnp.einsum('bhgqd,bhkd->bhgqk', query, key, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, num_heads, q_length, kv_length)
  if soft_cap is not None:
    logits = soft_cap * jnp.tanh(logits / soft_cap)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    probs = layers.dropout(probs, dropout_rate, dropout_rng)
  if groups == 1:
    out = jnp.einsum('bhqk,bhkd->bhqd', probs.astype(dtype), value, preferred_element_type=jnp.float32)
  else:
    probs = probs.reshape(batch, num_kv_heads, groups, q_length, kv_length)
    out = jnp.einsum('bhgqk,bhkd->bhgqd', probs.astype(dtype), value, preferred_element_type=jnp.float32)
    out = out.reshape(batch, num_heads, q_length, head_dim)
  return jnp.swapaxes(out, 1, 2)  # [batch, q_length, heads, head_dim]


def _jax_nn_attention(query, key, value, bias, mask, dtype, scale):
  """jax.nn.dot_product_attention; causal goes in as is_causal (cuDNN skips the masked blocks)."""
  is_causal = False
  if isinstance(mask, AttentionMask) and mask.causal and mask.prefix_length is None:
    is_causal = True
    mask = dataclasses.replace(mask, causal=False)
  mask = dense_mask(mask, query.shape[1], key.shape[1])
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  implementation = 'xla'
  if jax.default_backend() == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    implementation = 'cudnn'
  attend = functools.partial(jax.nn.dot_product_attention, query, key, value, bias=bias, mask=mask, scale=scale,
                             is_causal=is_causal)
  try:
    out = attend(implementation=implementation)
  except (ValueError, NotImplementedError, RuntimeError) as e:
    if implementation != 'cudnn':
      raise
    # cuDNN rejects some shapes, head sizes and library versions at trace time.
    _log_once(f'attention backend dot_product_attention: cuDNN unavailable ({e}); using its XLA version')
    out = attend(implementation='xla')
  return out.astype(jnp.float32)


def _kernel_segment_ids(mask: AttentionMask | None, batch: int, q_length: int, kv_length: int,
                        self_attention: bool) -> tuple[Array, Array] | None:
  """int32 (q_ids, kv_ids) carrying segments and padding; None when neither is given.

  Padding keys get id -1, which no query has; in self-attention padding queries
  get -1 too, so they see the padding (and no row is empty).
  """
  if mask is None or (mask.segment_ids is None and mask.input_mask is None):
    return None
  if mask.segment_ids is None:
    q_ids = jnp.zeros((batch, q_length), jnp.int32)
    kv_ids = jnp.zeros((batch, kv_length), jnp.int32)
  else:
    q_ids = mask.segment_ids.astype(jnp.int32)
    kv_ids = q_ids if mask.kv_segment_ids is None else mask.kv_segment_ids.astype(jnp.int32)
  if mask.input_mask is not None:
    valid = mask.input_mask > 0  # [batch, kv_length]
    kv_ids = jnp.where(valid, kv_ids, -1)
    if self_attention:
      q_ids = jnp.where(valid, q_ids, -1)
  return q_ids, kv_ids


def _pallas_gpu_attention(query, key, value, mask, dtype, scale, interpret, self_attention):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # pylint: disable=g-import-not-at-top
  batch, q_length, num_heads, _ = query.shape
  groups = num_heads // key.shape[2]
  if groups > 1:  # The kernel has no grouped heads: repeat each key/value head for its queries.
    key, value = (jnp.repeat(x, groups, axis=2) for x in (key, value))
  ids = _kernel_segment_ids(mask, batch, q_length, key.shape[1], self_attention)
  out = gpu_attention.mha(
      query.astype(dtype), key.astype(dtype), value.astype(dtype),
      None if ids is None else ids[0],  # Shared by queries and keys.
      sm_scale=scale, causal=mask is not None and mask.causal, interpret=interpret)
  return out.astype(jnp.float32)  # [batch, q_length, heads, head_dim]


def _splash_block(length: int) -> int:
  return next(b for b in (512, 256, 128) if length % b == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(num_heads: int, q_length: int, kv_length: int, causal: bool, window: int | None,
                   soft_cap: float | None, interpret: bool):
  """A splash kernel for one example `[heads, length, head_dim]` (built once per shape and mask)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  shape = (q_length, kv_length)
  if window is not None:
    head_mask = splash.LocalMask(shape, (window - 1, 0 if causal else window - 1), offset=0)
  elif causal:
    head_mask = splash.CausalMask(shape)
  else:
    head_mask = splash.FullMask(shape)
  bq, bkv = _splash_block(q_length), _splash_block(kv_length)
  block_sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                  block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  # The kernel holds arrays of mask metadata; made concrete, it can be cached across traces.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(splash.MultiHeadMask([head_mask] * num_heads), block_sizes=block_sizes,
                                  head_shards=1, q_seq_shards=1, attn_logits_soft_cap=soft_cap,
                                  interpret=interpret)


def _splash_attention(query, key, value, mask, dtype, scale, soft_cap, interpret, self_attention):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  batch, q_length, num_heads, _ = query.shape
  kv_length = key.shape[1]
  kernel = _splash_kernel(num_heads, q_length, kv_length, mask is not None and mask.causal,
                          None if mask is None else mask.sliding_window, soft_cap, interpret)
  # Splash has no scale argument: scale q instead.
  query = query * jnp.asarray(scale, query.dtype)
  query, key, value = (jnp.swapaxes(x, 1, 2).astype(dtype) for x in (query, key, value))  # [batch, heads, length, d]
  ids = _kernel_segment_ids(mask, batch, q_length, kv_length, self_attention)
  if ids is None:
    out = jax.vmap(kernel)(query, key, value)
  else:
    out = jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=splash.SegmentIds(q=qi, kv=ki)))(
        query, key, value, *ids)
  return jnp.swapaxes(out, 1, 2).astype(jnp.float32)  # [batch, q_length, heads, head_dim]


def _position_ids(mask: AttentionMask | None, q_length: int, kv_length: int, q_positions: Array | None,
                  kv_positions: Array | None, self_attention: bool) -> tuple[Array, Array]:
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
    mask: 'Array | AttentionMask | None' = None,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    backend: str = 'xla',
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
  check_backend(backend)
  batch, q_length, num_heads, head_dim = query.shape
  kv_length, num_kv_heads = key.shape[1], key.shape[2]
  if num_heads % num_kv_heads:
    raise PretrainError(f'{num_heads} query heads cannot share {num_kv_heads} key/value heads evenly')
  if logits_soft_cap is not None and logits_soft_cap <= 0:
    raise PretrainError(f'logits_soft_cap {logits_soft_cap} must be positive')
  scale = head_dim**-0.5 if scale is None else float(scale)
  interpret = interpret_default() if interpret is None else bool(interpret)
  structured = as_attention_mask(mask)
  if structured is not None:
    structured.validate(batch, q_length, kv_length)
  dropout_active = not deterministic and dropout_rate > 0.0
  features = AttentionFeatures(
      dropout=dropout_active,
      bias=bias is not None,
      alibi=alibi_slopes is not None,
      soft_cap=logits_soft_cap is not None,
      dense_mask=structured is not None and structured.dense is not None,
      causal=structured is not None and structured.causal,
      sliding_window=structured is not None and structured.sliding_window is not None,
      prefix=structured is not None and structured.prefix_length is not None,
      segments=structured is not None and structured.segment_ids is not None,
      kv_segments=structured is not None and structured.kv_segment_ids is not None,
      padding=structured is not None and structured.input_mask is not None,
      self_attention=self_attention,
      grouped=num_kv_heads < num_heads,
      dtype=jnp.dtype(dtype).name,
      q_length=q_length,
      kv_length=kv_length,
  )
  resolved, reason = resolve_backend(backend, features, jax.default_backend(), interpret=interpret)
  _record(backend, resolved, reason)

  if resolved == 'pallas_gpu':
    return _pallas_gpu_attention(query, key, value, structured, dtype, scale, interpret, self_attention)
  if resolved == 'splash_tpu':
    return _splash_attention(query, key, value, structured, dtype, scale, logits_soft_cap, interpret,
                             self_attention)
  if alibi_slopes is not None:
    q_positions, kv_positions = _position_ids(structured, q_length, kv_length, q_positions, kv_positions,
                                              self_attention)
    alibi = positions_lib.alibi_bias(alibi_slopes, q_positions, kv_positions)  # [batch or 1, heads, q, kv]
    bias = alibi if bias is None else bias + alibi
  if resolved == 'dot_product_attention':
    return _jax_nn_attention(query, key, value, bias, structured, dtype, scale)
  return _xla_attention(query, key, value, bias, dense_mask(mask, q_length, kv_length), dropout_rng,
                        dropout_rate, deterministic, dtype, scale, logits_soft_cap)


# The module.


def _qk_norm(kind: str, name: str) -> nn.Module:
  if kind == 'layernorm':
    return layers.LayerNorm(epsilon=1e-6, name=name)
  return layers.RMSNorm(epsilon=1e-6, name=name)


def _check_heads(num_heads: int, num_kv_heads: int | None) -> None:
  if num_kv_heads is not None and (num_kv_heads < 1 or num_heads % num_kv_heads):
    raise PretrainError(f'num_kv_heads {num_kv_heads} must be a positive divisor of num_heads {num_heads}')


def _check_variant(position: str, qk_norm: str, logits_soft_cap: float | None, sliding_window: int | None,
                   rotary_fraction: float) -> None:
  positions_lib.check_position(position)
  if qk_norm not in QK_NORMS:
    raise PretrainError(f'unknown qk_norm {qk_norm!r}; valid: {", ".join(QK_NORMS)}')
  if logits_soft_cap is not None and logits_soft_cap <= 0:
    raise PretrainError(f'logits_soft_cap {logits_soft_cap} must be positive (or None)')
  if sliding_window is not None and sliding_window < 1:
    raise PretrainError(f'sliding_window {sliding_window} must be >= 1 (or None)')
  if not 0.0 < rotary_fraction <= 1.0:
    raise PretrainError(f'rotary_fraction {rotary_fraction} must be in (0, 1]')


class MultiHeadAttention(nn.Module):
  """Attention with separate q/k/v/out projections (2-D kernels) and its variants as fields.

  Parameters: query/key/value/out {kernel, bias}; key and value have
  num_kv_heads * head_dim outputs; query_norm and key_norm (scale, + bias for
  layernorm) only with qk_norm.
  """
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  backend: str = 'xla'
  initializer_range: float = 0.02
  use_bias: bool = True  # Projection biases (BERT, GPT-2); T5 has none.
  logits_scale: float | None = None  # None: 1/sqrt(head_dim).
  num_kv_heads: int | None = None  # None: num_heads.
  position: str = 'none'  # Acts on 'rope' and 'alibi'; see positions.py.
  rope_theta: float = 10000.0
  rotary_fraction: float = 1.0
  qk_norm: str = 'none'
  logits_soft_cap: float | None = None
  sliding_window: int | None = None  # ANDed into every mask.
  interpret: bool | None = None  # Pallas interpreter; None reads PRETRAIN_ATTENTION_INTERPRET.

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array | None = None,
      *,
      mask: 'Array | AttentionMask | None' = None,
      bias: Array | None = None,
      deterministic: bool = True,
      positions: Array | None = None,
      kv_positions: Array | None = None,
      decode: bool = False,
  ) -> Array:
    """`[batch, q_length, embed]` (+ `[batch, kv_length, embed]`, default self) -> `[batch, q_length, embed]`.

    positions / kv_positions: int `[batch or 1, length]` ids for RoPE and ALiBi;
    by default per-segment positions when the mask has segment ids, else 0..L-1.
    RoPE and ALiBi apply to cross-attention too (keys at their own ids); a family
    that wants none there builds that module with position='none'.

    decode: causal self-attention through a key/value cache (flax collection
    'cache': cached_key, cached_value `[batch, max_length, kv_heads, head_dim]`
    and cache_index). The call that creates the cache (e.g. init on inputs of
    max_length tokens) attends as usual and stores nothing; each later call
    writes its keys/values at cache_index, advances it, and its queries attend
    to the cache slots <= their own (and within sliding_window). positions
    default to cache_index + 0, 1, ...; the mask may only say causal.
    """
    check_backend(self.backend)
    _check_heads(self.num_heads, self.num_kv_heads)
    _check_variant(self.position, self.qk_norm, self.logits_soft_cap, self.sliding_window, self.rotary_fraction)
    self_attention = inputs_kv is None or inputs_kv is inputs_q
    if inputs_kv is None:
      inputs_kv = inputs_q
    num_kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
    init = layers.default_init(self.initializer_range)

    def projection(name, heads):
      return layers.Dense(heads * self.head_dim, ('embed', 'heads'), use_bias=self.use_bias, dtype=self.dtype,
                          kernel_init=init, name=name)

    def split_heads(x, heads):
      x = x.reshape(x.shape[:-1] + (heads, self.head_dim))
      # Fewer key/value heads than the tensor axis may not divide: leave them to propagation.
      return nn.with_logical_constraint(
          x, ('act_batch', 'act_length', 'act_heads' if heads == self.num_heads else None, None))

    query = split_heads(projection('query', self.num_heads)(inputs_q), self.num_heads)  # [batch, q, heads, d]
    key = split_heads(projection('key', num_kv_heads)(inputs_kv), num_kv_heads)  # [batch, kv, kv_heads, d]
    value = split_heads(projection('value', num_kv_heads)(inputs_kv), num_kv_heads)  # [batch, kv, kv_heads, d]
    if self.qk_norm != 'none':
      query = _qk_norm(self.qk_norm, 'query_norm')(query)
      key = _qk_norm(self.qk_norm, 'key_norm')(key)

    mask = _with_sliding_window(mask, self.sliding_window)
    cache = self._decode_cache(key, mask, self_attention) if decode else None
    if cache is not None:
      if positions is None:
        positions = cache[2].value + jnp.arange(query.shape[1], dtype=jnp.int32)[None]  # [1, q_length]
      kv_positions = positions
    if self.position in positions_lib.ATTENTION_POSITIONS:
      positions, kv_positions = _position_ids(as_attention_mask(mask), query.shape[1], key.shape[1], positions,
                                              kv_positions, self_attention)
    if self.position == 'rope':
      query = positions_lib.apply_rope(query, positions, theta=self.rope_theta, fraction=self.rotary_fraction)
      key = positions_lib.apply_rope(key, kv_positions, theta=self.rope_theta, fraction=self.rotary_fraction)
    if cache is not None:
      window = getattr(as_attention_mask(mask), 'sliding_window', None)
      key, value, mask, kv_positions = _update_cache(cache, key, value, window)

    dropout_active = not deterministic and self.dropout_rate > 0.0
    x = dot_product_attention(
        query, key, value,
        bias=bias,
        mask=mask,
        dropout_rng=self.make_rng('dropout') if dropout_active else None,
        dropout_rate=self.dropout_rate,
        deterministic=deterministic,
        backend=self.backend,
        dtype=self.dtype,
        scale=self.logits_scale,
        logits_soft_cap=self.logits_soft_cap,
        alibi_slopes=positions_lib.alibi_slopes(self.num_heads) if self.position == 'alibi' else None,
        q_positions=positions,
        kv_positions=kv_positions,
        self_attention=self_attention and cache is None,
        interpret=self.interpret,
    )  # [batch, q_length, heads, head_dim]
    x = x.reshape(x.shape[:-2] + (self.num_heads * self.head_dim,))
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_heads'))
    x = layers.Dense(inputs_q.shape[-1], ('heads', 'embed'), use_bias=self.use_bias, dtype=self.dtype,
                     kernel_init=init, name='out')(x)
    return x  # [batch, q_length, embed] float32

  def _decode_cache(self, key: Array, mask, self_attention: bool):
    """(cached_key, cached_value, cache_index) variables; None on the call that creates them."""
    if not self_attention:
      raise PretrainError('decode caches self-attention only (cross-attention keys come from its inputs)')
    mask = as_attention_mask(mask)
    if mask is not None and any(getattr(mask, f) is not None
                                for f in ('prefix_length', 'segment_ids', 'input_mask', 'dense')):
      raise PretrainError('decode attends causally over its cache; it takes no prefix, segment, padding or '
                          'dense mask')
    initialized = self.has_variable('cache', 'cached_key')
    # float32 holds bfloat16 keys exactly, and RoPE's rotated keys are float32.
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, jnp.float32)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, key.shape, jnp.float32)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    return (cached_key, cached_value, cache_index) if initialized else None


def _update_cache(cache, key: Array, value: Array, sliding_window: int | None):
  """Writes `[batch, q_length, kv_heads, head_dim]` keys/values at the cache index and advances it.

  Returns (keys, values) `[batch, max_length, kv_heads, head_dim]` of the whole
  cache, the mask of the queries (cache slots index, index + 1, ...) over it and
  the slots' positions `[1, max_length]`.
  """
  cached_key, cached_value, cache_index = cache
  index = cache_index.value
  q_length, max_length = key.shape[1], cached_key.value.shape[1]
  start = (0, index, 0, 0)
  cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(jnp.float32), start)
  cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(jnp.float32), start)
  cache_index.value = index + q_length
  q_slots = index + jnp.arange(q_length, dtype=jnp.int32)[:, None]  # [q_length, 1]
  kv_slots = jnp.arange(max_length, dtype=jnp.int32)[None]  # [1, max_length]
  visible = kv_slots <= q_slots  # [q_length, max_length]
  if sliding_window is not None:
    visible &= q_slots - kv_slots < sliding_window
  return cached_key.value, cached_value.value, AttentionMask(dense=visible[None, None]), kv_slots


def decode_positions(module: nn.Module, length: int) -> tuple[Array, Array]:
  """For a family's decode path: (positions `[1, length]` of its new tokens, positions `[1, max_length]` of
  the cache slots).

  Keeps 'cache' variables index and positions in `module`; the call that
  creates them sets max_length = length and advances nothing, as
  MultiHeadAttention's cache does.
  """
  initialized = module.has_variable('cache', 'index')
  index = module.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
  slots = module.variable('cache', 'positions', lambda: jnp.arange(length, dtype=jnp.int32))
  positions = index.value + jnp.arange(length, dtype=jnp.int32)[None]
  if initialized:
    index.value = index.value + length
  return positions, slots.value[None]


# Config.


_ZERO_IS_NONE = ('num_kv_heads', 'logits_soft_cap', 'sliding_window')


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """The attention variant of a model; an ablation changes these fields only.

  Families keep their own sizes (heads, head_dim), dtype, dropout and init and
  build the module with `build`; `position` also tells the family whether to
  add learned/sinusoidal embeddings or a T5 relative bias itself.
  """
  backend: str = 'xla'
  num_kv_heads: int | None = None
  position: str = 'none'
  rope_theta: float = 10000.0
  rotary_fraction: float = 1.0
  relative_num_buckets: int = 32  # position='relative_bias' (T5).
  relative_max_distance: int = 128
  qk_norm: str = 'none'
  logits_soft_cap: float | None = None
  sliding_window: int | None = None
  interpret: bool | None = None

  def __post_init__(self):
    check_backend(self.backend)
    if self.num_kv_heads is not None and self.num_kv_heads < 1:
      raise PretrainError(f'num_kv_heads {self.num_kv_heads} must be positive (or None)')
    _check_variant(self.position, self.qk_norm, self.logits_soft_cap, self.sliding_window, self.rotary_fraction)
    if self.rope_theta <= 0:
      raise PretrainError(f'rope_theta {self.rope_theta} must be positive')
    if self.relative_num_buckets < 4 or self.relative_max_distance < 1:
      raise PretrainError(f'relative_num_buckets {self.relative_num_buckets} must be >= 4 and '
                          f'relative_max_distance {self.relative_max_distance} >= 1')

  @classmethod
  def from_dict(cls, d: Any) -> 'AttentionConfig':
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
    _check_heads(num_heads, self.num_kv_heads)

  def build(self, *, num_heads: int, head_dim: int, dtype=jnp.float32, dropout_rate: float = 0.0,
            initializer_range: float = 0.02, use_bias: bool = True, logits_scale: float | None = None,
            name: str | None = None) -> MultiHeadAttention:
    """The MultiHeadAttention of this variant with the family's sizes and init."""
    self.check_heads(num_heads)
    return MultiHeadAttention(
        num_heads=num_heads, head_dim=head_dim, dtype=dtype, dropout_rate=dropout_rate, backend=self.backend,
        initializer_range=initializer_range, use_bias=use_bias, logits_scale=logits_scale,
        num_kv_heads=self.num_kv_heads, position=self.position, rope_theta=self.rope_theta,
        rotary_fraction=self.rotary_fraction, qk_norm=self.qk_norm, logits_soft_cap=self.logits_soft_cap,
        sliding_window=self.sliding_window, interpret=self.interpret, name=name)

  def relative_position_bias(self, *, num_heads: int, bidirectional: bool,
                             name: str | None = None) -> positions_lib.RelativePositionBias:
    """T5's relative bias module of this config (position='relative_bias'); build one per stack."""
    return positions_lib.RelativePositionBias(num_heads=num_heads, num_buckets=self.relative_num_buckets,
                                              max_distance=self.relative_max_distance,
                                              bidirectional=bidirectional, name=name)

  def features(self, *, num_heads: int, dtype: Any = 'float32', dropout: bool = False, causal: bool = False,
               padding: bool = False, segments: bool = False, prefix: bool = False, bias: bool = False,
               self_attention: bool = True, length: int | None = None) -> AttentionFeatures:
    """The AttentionFeatures of a call of this variant, e.g. a family's self-attention in training."""
    return AttentionFeatures(
        dropout=dropout, bias=bias or self.position == 'relative_bias', alibi=self.position == 'alibi',
        soft_cap=self.logits_soft_cap is not None, causal=causal, sliding_window=self.sliding_window is not None,
        prefix=prefix, segments=segments, padding=padding, self_attention=self_attention,
        grouped=self.num_kv_heads is not None and self.num_kv_heads < num_heads, dtype=jnp.dtype(dtype).name,
        q_length=length, kv_length=length)

  def resolve(self, features: AttentionFeatures, platform: str | None = None) -> tuple[str, str]:
    """(backend, reason) for a call with `features` on platform (default: jax.default_backend())."""
    interpret = interpret_default() if self.interpret is None else self.interpret
    return resolve_backend(self.backend, features, platform or jax.default_backend(), interpret=interpret)


def model_config_from_dict(cls, d: Any):
  """A family's config dataclass `cls` from a config section, its `attention` section included."""
  layers.check_config_keys(cls, d)
  if not isinstance(d.get('attention', AttentionConfig()), AttentionConfig):
    d = dict(d, attention=AttentionConfig.from_dict(d['attention']))
  return cls(**d)
