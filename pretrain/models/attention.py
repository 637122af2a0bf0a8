"""Multi-head attention, the one attention module every model family uses.

The math lives in `dot_product_attention`, which dispatches on a backend name:

  'xla'                    einsums written out here; softmax in float32; runs
                           anywhere and supports attention dropout.
  'dot_product_attention'  `jax.nn.dot_product_attention`: cuDNN's fused kernel
                           on GPU with bfloat16/float16 compute, that API's XLA
                           implementation elsewhere. It has no dropout, so with
                           active attention dropout this falls back to 'xla'.

Every fallback is logged once with its reason. Later backends (Pallas kernels,
other masks and biases) slot in as further names here.

Layout: queries/keys/values are `[batch, length, heads, head_dim]`, the layout
of `jax.nn.dot_product_attention` and a free reshape of the projections.
`mask` is boolean (True = may attend), `bias` is added to the logits; both
broadcast to `[batch, heads, q_length, kv_length]`.
"""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from pretrain.errors import PretrainError
from pretrain.models import layers

Array = jax.Array

BACKENDS = ('xla', 'dot_product_attention')

_logger = logging.getLogger(__name__)
_logged_fallbacks = set()


def _log_once(message: str) -> None:
  if message not in _logged_fallbacks:
    _logged_fallbacks.add(message)
    _logger.warning(message)


def check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise PretrainError(f'unknown attention backend {backend!r}; valid: {", ".join(BACKENDS)}')


def padding_mask(input_mask: Array) -> Array:
  """`[batch, length]` (1 = real token) -> boolean `[batch, 1, 1, kv_length]`."""
  return input_mask[:, None, None, :].astype(jnp.bool_)


def _xla_attention(query, key, value, bias, mask, dropout_rng, dropout_rate, deterministic, dtype, scale):
  # Scaling q costs length*head_dim multiplies per head instead of length**2.
  if scale != 1.0:
    query = query * jnp.asarray(scale, query.dtype)
  # Heads-major copies make both matmuls plain batched matmuls; XLA:CPU runs
  # this ~25% faster (fwd+bwd) than the einsums over [batch, length, heads, head_dim].
  query, key, value = (jnp.swapaxes(x, 1, 2).astype(dtype) for x in (query, key, value))
  logits = jnp.einsum(
      'bhqd,bhkd->bhqk', query, key, preferred_element_type=jnp.float32)  # [batch, heads, q_length, kv_length]
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    probs = layers.dropout(probs, dropout_rate, dropout_rng)
  out = jnp.einsum(
      'bhqk,bhkd->bhqd', probs.astype(dtype), value, preferred_element_type=jnp.float32)
  return jnp.swapaxes(out, 1, 2)  # [batch, q_length, heads, head_dim]


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    bias: Array | None = None,
    mask: Array | None = None,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    backend: str = 'xla',
    dtype=jnp.float32,
    scale: float | None = None,
) -> Array:
  """softmax(scale q k^T + bias, masked) v -> float32 `[batch, q_length, heads, head_dim]`.

  Args:
    query: `[batch, q_length, heads, head_dim]`.
    key: `[batch, kv_length, heads, head_dim]`.
    value: `[batch, kv_length, heads, head_dim]`.
    bias: float logits bias broadcastable to `[batch, heads, q_length, kv_length]`.
    mask: boolean, same broadcasting; False positions get no weight.
    dropout_rng: PRNG key for attention-probability dropout.
    dropout_rate: probability of dropping an attention weight.
    deterministic: no dropout when True.
    backend: one of BACKENDS.
    dtype: matmul input dtype (accumulation is always float32).
    scale: logits scale; None is 1/sqrt(head_dim) (T5 uses 1.0, folding it into the init).
  """
  check_backend(backend)
  scale = query.shape[-1]**-0.5 if scale is None else float(scale)
  if backend == 'dot_product_attention':
    if not deterministic and dropout_rate > 0.0:
      _log_once('attention backend dot_product_attention has no dropout; using xla while attention dropout is active')
    else:
      return _jax_nn_attention(query, key, value, bias, mask, dtype, scale)
  return _xla_attention(query, key, value, bias, mask, dropout_rng, dropout_rate, deterministic, dtype, scale)


def _jax_nn_attention(query, key, value, bias, mask, dtype, scale):
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  implementation = 'xla'
  if jax.default_backend() != 'gpu':
    _log_once(f'attention backend dot_product_attention: no cuDNN on {jax.default_backend()}; '
              'using jax.nn.dot_product_attention(implementation="xla")')
  elif jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    _log_once(f'attention backend dot_product_attention: cuDNN needs bfloat16/float16 compute, not {jnp.dtype(dtype)}; '
              'using jax.nn.dot_product_attention(implementation="xla")')
  else:
    implementation = 'cudnn'
  try:
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation=implementation)
  except (ValueError, NotImplementedError, RuntimeError) as e:
    if implementation != 'cudnn':
      raise
    # cuDNN rejects some shapes, head sizes and library versions at trace time.
    _log_once(f'attention backend dot_product_attention: cuDNN unavailable ({e}); using xla')
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation='xla')
  return out.astype(jnp.float32)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with separate q/k/v/out projections (2-D kernels)."""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  backend: str = 'xla'
  initializer_range: float = 0.02
  use_bias: bool = True  # Projection biases (BERT, GPT-2); T5 has none.
  logits_scale: float | None = None  # None: 1/sqrt(head_dim).

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array | None = None,
      *,
      mask: Array | None = None,
      bias: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """`[batch, q_length, embed]` (+ `[batch, kv_length, embed]`, default self) -> `[batch, q_length, embed]`."""
    if inputs_kv is None:
      inputs_kv = inputs_q
    features = self.num_heads * self.head_dim
    init = layers.default_init(self.initializer_range)

    def projection(name):
      return layers.Dense(features, ('embed', 'heads'), use_bias=self.use_bias, dtype=self.dtype,
                          kernel_init=init, name=name)

    def split_heads(x):
      x = x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
      return nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_heads', None))

    query = split_heads(projection('query')(inputs_q))  # [batch, q_length, heads, head_dim]
    key = split_heads(projection('key')(inputs_kv))  # [batch, kv_length, heads, head_dim]
    value = split_heads(projection('value')(inputs_kv))  # [batch, kv_length, heads, head_dim]

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
    )  # [batch, q_length, heads, head_dim]
    x = x.reshape(x.shape[:-2] + (features,))
    x = nn.with_logical_constraint(x, ('act_batch', 'act_length', 'act_heads'))
    x = layers.Dense(inputs_q.shape[-1], ('heads', 'embed'), use_bias=self.use_bias, dtype=self.dtype,
                     kernel_init=init, name='out')(x)
    return x  # [batch, q_length, embed] float32
