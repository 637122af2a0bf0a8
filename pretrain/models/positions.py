"""Position information for attention: sinusoidal, RoPE, ALiBi and T5 relative bias.

`AttentionConfig.position` names one scheme; the family model or the attention
module applies it:

  'none'           no position information.
  'learned'        a `[positions, embed]` table added to the token embeddings;
                   it lives in the family model (an embedding like any other).
  'sinusoidal'     `sinusoidal_embedding` added to the token embeddings (Vaswani
                   et al. 2017, sin on even and cos on odd features).
  'rope'           `apply_rope` rotates queries and keys inside
                   MultiHeadAttention (Su et al. 2021, GPT-NeoX "rotate half"
                   layout; `rotary_fraction` < 1 rotates only the leading dims).
  'alibi'          `alibi_bias` is added to the logits inside MultiHeadAttention
                   (Press et al. 2022).
  'relative_bias'  `RelativePositionBias`, built once per stack by the family and
                   passed to every layer as `bias=` (T5, Raffel et al. 2020).

Every scheme reads explicit position ids `[batch, length]` (or `[1, length]`),
so packed sequences can restart at each segment: `segment_positions`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import precision

Array = jax.Array

POSITIONS = ("none", "learned", "sinusoidal", "rope", "alibi", "relative_bias")
# The schemes MultiHeadAttention applies itself; the others belong to the family model.
ATTENTION_POSITIONS = ("rope", "alibi")


def check_position(position: str) -> None:
  if position not in POSITIONS:
    raise PretrainError(f"unknown position {position!r}; valid: {', '.join(POSITIONS)}")


def default_positions(length: int) -> np.ndarray:
  """`[1, length]` int32 ids 0..length-1, shared by every example (numpy: known when traced)."""
  return np.arange(length, dtype=np.int32)[None]


def segment_positions(segment_ids: Array) -> Array:
  """`[batch, length]` segment ids -> int32 positions that restart at 0 where the id changes."""
  length = segment_ids.shape[-1]
  index = jnp.arange(length, dtype=jnp.int32)
  starts = jnp.concatenate(
    [jnp.ones_like(segment_ids[..., :1], jnp.bool_), segment_ids[..., 1:] != segment_ids[..., :-1]],
    axis=-1,
  )
  start_index = jax.lax.cummax(
    jnp.where(starts, index, 0), axis=segment_ids.ndim - 1
  )  # [batch, length]
  return index - start_index


# Sinusoidal.


def sinusoidal_embedding(positions: Array, features: int, max_timescale: float = 10000.0) -> Array:
  """Positions `[...]` -> float32 `[..., features]`: PE[p, 2i] = sin(p / T^(2i/d)), PE[p, 2i+1] = cos(...)."""
  if features % 2:
    raise PretrainError(
      f"sinusoidal position embedding needs an even number of features, got {features}"
    )
  inv_timescales = max_timescale ** (
    -np.arange(0, features, 2, dtype=np.float64) / features
  )  # [features / 2]
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_timescales.astype(np.float32)
  # Interleave: sin at even features, cos at odd.
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(
    angles.shape[:-1] + (features,)
  )


def sinusoidal_table(length: int, features: int, max_timescale: float = 10000.0) -> Array:
  """The `[length, features]` float32 table of positions 0..length-1."""
  return sinusoidal_embedding(jnp.arange(length), features, max_timescale)


# Rotary position embedding.


def rotary_dims(head_dim: int, fraction: float = 1.0) -> int:
  """How many leading dims of each head RoPE rotates: head_dim * fraction, rounded down to even."""
  if not 0.0 < fraction <= 1.0:
    raise PretrainError(f"rotary_fraction {fraction} must be in (0, 1]")
  dims = int(head_dim * fraction) // 2 * 2
  if dims < 2:
    raise PretrainError(
      f"rotary_fraction {fraction} of head_dim {head_dim} leaves fewer than 2 dims to rotate"
    )
  return dims


def apply_rope(
  x: Array, positions: Array, *, theta: float = 10000.0, fraction: float = 1.0
) -> Array:
  """Rotates `[batch, length, heads, head_dim]` by its positions `[batch or 1, length]`; float32.

  Pairs dim i with dim i + rotary/2 of the first `rotary` dims (rotate-half) and
  turns them by position * theta^(-2i/rotary); the remaining dims pass through.
  q.k after rotation depends on the positions only through their difference.
  """
  head_dim = x.shape[-1]
  rotary = rotary_dims(head_dim, fraction)
  half = rotary // 2
  inv_freq = (theta ** (-np.arange(half, dtype=np.float64) * 2 / rotary)).astype(
    np.float32
  )  # [half]
  if isinstance(positions, np.ndarray) and precision.target_platform() == "cpu":
    # XLA:CPU fuses the sines and cosines into every consumer, forward and backward, so each
    # element of the queries, keys and their gradients would recompute both: a table instead.
    angles = positions.astype(np.float32)[:, :, None, None] * inv_freq  # [batch, length, 1, half]
    cos, sin = np.cos(angles), np.sin(angles)
  else:
    angles = jnp.asarray(positions, jnp.float32)[:, :, None, None] * inv_freq
    cos, sin = jnp.cos(angles), jnp.sin(angles)
  x = x.astype(jnp.float32)
  x1, x2, rest = x[..., :half], x[..., half:rotary], x[..., rotary:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


# ALiBi.


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi's head slopes, float32 `[num_heads]`.

  For n a power of two: 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise the n' =
  largest power of two below n gives the first n' slopes and every other slope
  of the 2n' series fills the rest (Press et al., the reference code).
  """
  if num_heads < 1:
    raise PretrainError(f"ALiBi needs at least one head, got {num_heads}")

  def power_of_two_slopes(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  closest = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = power_of_two_slopes(closest)
  if closest < num_heads:
    slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(slopes, np.float32)


def alibi_bias(
  slopes: Array, q_positions: Array, kv_positions: Array, *, bidirectional: bool = True
) -> Array:
  """float32 `[batch or 1, heads, q_length, kv_length]` logits bias -slope * distance.

  bidirectional: distance |q - k| (symmetric, for encoders). Otherwise the
  causal form q - k, which equals the symmetric one wherever a causal mask lets
  a query look (k <= q).
  """
  relative = (
    jnp.asarray(q_positions, jnp.float32)[:, :, None]
    - jnp.asarray(kv_positions, jnp.float32)[:, None, :]
  )  # [batch, q_length, kv_length]
  distance = jnp.abs(relative) if bidirectional else relative
  return -jnp.asarray(slopes, jnp.float32)[None, :, None, None] * distance[:, None]


# T5 relative position bias.


def _distance_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
  """int32 `[max_distance + 1]`: T5's bucket of each distance 0..max_distance within `num_buckets`.

  float32 arithmetic with truncation toward zero, as Mesh TensorFlow's (and
  HF's) relative_position_bucket computes it.
  """
  max_exact = num_buckets // 2
  distance = np.arange(max_distance + 1)
  with np.errstate(divide="ignore"):  # log(0) at distance 0, which takes the exact branch.
    log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(
      math.log(max_distance / max_exact)
    )
  large = max_exact + np.where(
    distance < max_exact, 0.0, log_ratio * np.float32(num_buckets - max_exact)
  ).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return np.where(distance < max_exact, distance, large).astype(np.int32)


def relative_position_bucket(
  relative_position: Array,
  *,
  bidirectional: bool = True,
  num_buckets: int = 32,
  max_distance: int = 128,
) -> Array:
  """T5's bucket of each relative position (key position - query position); int32.

  Half of the buckets (all of them when causal) are exact distances 0 ..
  num_buckets/2 - 1 of that half; the rest grow logarithmically up to
  max_distance, beyond which everything shares the last bucket. Bidirectional:
  keys after the query use the upper half. Causal: keys after the query get
  bucket 0 (a causal mask hides them).
  """
  if num_buckets < 4 or (bidirectional and num_buckets % 2):
    raise PretrainError(
      f"relative position num_buckets {num_buckets} must be >= 4 (and even when bidirectional)"
    )
  half = num_buckets // 2 if bidirectional else num_buckets
  if max_distance <= half // 2:
    raise PretrainError(
      f"relative position max_distance {max_distance} must exceed the {half // 2} exact buckets"
    )
  relative_position = jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    offset = jnp.where(relative_position > 0, half, 0)
    distance = jnp.abs(relative_position)
  else:
    offset = 0
    distance = jnp.maximum(-relative_position, 0)
  table = jnp.asarray(_distance_buckets(half, max_distance))
  return offset + table[jnp.minimum(distance, max_distance)]


class RelativePositionBias(nn.Module):
  """T5's relative attention bias: a `[num_buckets, heads]` table -> `[1 or batch, heads, q, kv]`.

  Build it once per stack (encoder, decoder) and pass its output as `bias=` to
  every layer's self-attention.
  """

  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  embedding_init: nn.initializers.Initializer = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform"
  )

  @nn.compact
  def __call__(
    self,
    q_length: int,
    kv_length: int,
    *,
    q_positions: Array | None = None,
    kv_positions: Array | None = None,
  ) -> Array:
    """float32 bias; `[batch, ...]` when position ids `[batch, length]` are given, else `[1, ...]`."""
    table = self.param(
      "embedding",
      nn.with_logical_partitioning(self.embedding_init, ("position", "heads")),
      (self.num_buckets, self.num_heads),
      jnp.float32,
    )
    q_positions = default_positions(q_length) if q_positions is None else q_positions
    kv_positions = default_positions(kv_length) if kv_positions is None else kv_positions
    relative = (
      kv_positions[:, None, :] - q_positions[:, :, None]
    )  # [batch or 1, q_length, kv_length]
    buckets = relative_position_bucket(
      relative,
      bidirectional=self.bidirectional,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    bias = jnp.take(table, buckets, axis=0)  # [batch or 1, q_length, kv_length, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))  # [batch or 1, heads, q_length, kv_length]
