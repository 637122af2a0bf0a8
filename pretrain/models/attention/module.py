"""MultiHeadAttention: q/k/v/out projections around `dot_product_attention`, its variant one AttentionConfig.

Decoding keeps a key/value cache in the flax collection 'cache'.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pretrain.errors import PretrainError
from pretrain.models import layers
from pretrain.models import positions as positions_lib
from pretrain.models.attention.config import AttentionConfig
from pretrain.models.attention.functional import dot_product_attention
from pretrain.models.attention.functional import position_ids
from pretrain.models.attention.masks import AttentionMask
from pretrain.models.attention.masks import as_attention_mask
from pretrain.models.attention.masks import with_sliding_window

Array = jax.Array


def _qk_norm(kind: str, name: str) -> nn.Module:
  if kind == "layernorm":
    return layers.LayerNorm(epsilon=1e-6, name=name)
  return layers.RMSNorm(epsilon=1e-6, name=name)


class MultiHeadAttention(nn.Module):
  """Attention with separate q/k/v/out projections (2-D kernels); the variant is `config`.

  Parameters: query/key/value/out {kernel, bias}; key and value have
  num_kv_heads * head_dim outputs; query_norm and key_norm (scale, + bias for
  layernorm) only with qk_norm.

  Each projection has its own initializer (None: kernel_init), so a family
  draws its scheme directly: GPT-2 scales out, T5 scales query and out.
  """

  num_heads: int
  head_dim: int
  config: AttentionConfig = AttentionConfig()
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  use_bias: bool = True  # Projection biases (BERT, GPT-2); T5 has none.
  logits_scale: float | None = None  # None: 1/sqrt(head_dim).
  kernel_init: layers.Initializer = layers.default_init(0.02)
  query_init: layers.Initializer | None = None
  key_init: layers.Initializer | None = None
  value_init: layers.Initializer | None = None
  out_init: layers.Initializer | None = None

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array | None = None,
    *,
    mask: "Array | AttentionMask | None" = None,
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
    cfg = self.config
    cfg.check_heads(self.num_heads)
    self_attention = inputs_kv is None or inputs_kv is inputs_q
    if inputs_kv is None:
      inputs_kv = inputs_q
    num_kv_heads = self.num_heads if cfg.num_kv_heads is None else cfg.num_kv_heads

    def projection(name, heads, init):
      return layers.Dense(
        heads * self.head_dim,
        ("embed", "heads"),
        use_bias=self.use_bias,
        dtype=self.dtype,
        kernel_init=init or self.kernel_init,
        name=name,
      )

    def split_heads(x, heads):
      x = x.reshape(x.shape[:-1] + (heads, self.head_dim))
      # Fewer key/value heads than the tensor axis may not divide: leave them to propagation.
      return nn.with_logical_constraint(
        x, ("act_batch", "act_length", "act_heads" if heads == self.num_heads else None, None)
      )

    query = split_heads(
      projection("query", self.num_heads, self.query_init)(inputs_q), self.num_heads
    )
    key = split_heads(projection("key", num_kv_heads, self.key_init)(inputs_kv), num_kv_heads)
    value = split_heads(projection("value", num_kv_heads, self.value_init)(inputs_kv), num_kv_heads)
    # query [batch, q, heads, d]; key, value [batch, kv, kv_heads, d].
    if cfg.qk_norm != "none":
      query = _qk_norm(cfg.qk_norm, "query_norm")(query)
      key = _qk_norm(cfg.qk_norm, "key_norm")(key)

    mask = with_sliding_window(mask, cfg.sliding_window)
    cache = self._decode_cache(key, mask, self_attention) if decode else None
    if cache is not None:
      if positions is None:
        positions = (
          cache[2].value + jnp.arange(query.shape[1], dtype=jnp.int32)[None]
        )  # [1, q_length]
      kv_positions = positions
    if cfg.position in positions_lib.ATTENTION_POSITIONS:
      positions, kv_positions = position_ids(
        as_attention_mask(mask),
        query.shape[1],
        key.shape[1],
        positions,
        kv_positions,
        self_attention,
      )
    if cfg.position == "rope":
      query = positions_lib.apply_rope(
        query, positions, theta=cfg.rope_theta, fraction=cfg.rotary_fraction
      )
      key = positions_lib.apply_rope(
        key, kv_positions, theta=cfg.rope_theta, fraction=cfg.rotary_fraction
      )
    if cache is not None:
      window = getattr(as_attention_mask(mask), "sliding_window", None)
      key, value, mask, kv_positions = _update_cache(cache, key, value, window)

    dropout_active = not deterministic and self.dropout_rate > 0.0
    x = dot_product_attention(
      query,
      key,
      value,
      bias=bias,
      mask=mask,
      dropout_rng=self.make_rng("dropout") if dropout_active else None,
      dropout_rate=self.dropout_rate,
      deterministic=deterministic,
      backend=cfg.backend,
      dtype=self.dtype,
      scale=self.logits_scale,
      logits_soft_cap=cfg.logits_soft_cap,
      alibi_slopes=positions_lib.alibi_slopes(self.num_heads) if cfg.position == "alibi" else None,
      q_positions=positions,
      kv_positions=kv_positions,
      self_attention=self_attention and cache is None,
      interpret=cfg.interpret,
    )  # [batch, q_length, heads, head_dim]
    x = x.reshape(x.shape[:-2] + (self.num_heads * self.head_dim,))
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_heads"))
    x = layers.Dense(
      inputs_q.shape[-1],
      ("heads", "embed"),
      use_bias=self.use_bias,
      dtype=self.dtype,
      kernel_init=self.out_init or self.kernel_init,
      name="out",
    )(x)
    return x  # [batch, q_length, embed] float32

  def _decode_cache(self, key: Array, mask, self_attention: bool):
    """(cached_key, cached_value, cache_index) variables; None on the call that creates them."""
    if not self_attention:
      raise PretrainError(
        "decode caches self-attention only (cross-attention keys come from its inputs)"
      )
    mask = as_attention_mask(mask)
    if mask is not None and any(
      getattr(mask, f) is not None for f in ("prefix_length", "segment_ids", "input_mask", "dense")
    ):
      raise PretrainError(
        "decode attends causally over its cache; it takes no prefix, segment, padding or dense mask"
      )
    initialized = self.has_variable("cache", "cached_key")
    # float32 holds bfloat16 keys exactly, and RoPE's rotated keys are float32.
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, jnp.float32)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, key.shape, jnp.float32)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
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
  cached_value.value = jax.lax.dynamic_update_slice(
    cached_value.value, value.astype(jnp.float32), start
  )
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
  initialized = module.has_variable("cache", "index")
  index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
  slots = module.variable("cache", "positions", lambda: jnp.arange(length, dtype=jnp.int32))
  positions = index.value + jnp.arange(length, dtype=jnp.int32)[None]
  if initialized:
    index.value = index.value + length
  return positions, slots.value[None]
