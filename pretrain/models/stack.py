"""What every family's model does alike: read its config, run a stack of layers, count its parameters and its
matmul FLOPs."""

import functools
import math
from typing import Any, Self

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.models import attention as attention_lib
from pretrain.models import layers


class ModelConfig:
  """Mixin of a family's model config dataclass, which has the fields dtype, num_heads, head_dim (a field or a
  property) and attention."""

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def attention_features(self) -> tuple[int, int]:
    """(q_features, kv_features) of attention_flops: heads * head_dim, kv_heads * head_dim."""
    return self.num_heads * self.head_dim, (
      self.attention.num_kv_heads or self.num_heads
    ) * self.head_dim

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Self:
    return attention_lib.model_config_from_dict(cls, d)


def layer_stack(
  block_cls,
  config,
  x: jax.Array,
  *args,
  num_layers: int,
  deterministic: bool,
  scanned_name: str,
  unrolled_name: str,
  **fields,
) -> jax.Array:
  """x through num_layers blocks `block_cls(config, **fields)`; args go to every block unchanged.

  Unrolled, the blocks are modules unrolled_name.format(i); with
  config.scan_layers they are one module scanned_name whose params (and decode
  cache) stack the layers on a leading 'layers' axis, and a block returns
  (x, None). config.remat_policy rematerializes each block; deterministic, its
  last argument, stays static because it picks the dropout branch at trace time.
  """
  if config.remat_policy != "none":
    block_cls = nn.remat(
      block_cls,
      policy=layers.remat_policy(config.remat_policy),
      prevent_cse=not config.scan_layers,
      static_argnums=(len(args) + 2,),
    )  # Counting self.
  if config.scan_layers:
    block_cls = nn.scan(
      block_cls,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * (len(args) + 1),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = block_cls(config, name=scanned_name, **fields)(x, *args, deterministic)
    return x
  for i in range(num_layers):
    x = block_cls(config, name=unrolled_name.format(i), **fields)(x, *args, deterministic)
  return x


def abstract_params(model: nn.Module, inputs: dict[str, Any]):
  """The boxed (logically annotated) parameter tree of model.init(**inputs) as ShapeDtypeStructs; allocates nothing."""
  return jax.eval_shape(functools.partial(model.init, **inputs), jax.random.key(0))["params"]


def count_params(params) -> int:
  """Number of parameters in a (boxed or plain, abstract or concrete) tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params)))


# Matmul FLOPs, 2 per multiply-add.


def dense_flops(length: int, features_in: int, features_out: int, count: int = 1) -> int:
  """count dense layers `[in, out]` applied at length positions."""
  return 2 * length * features_in * features_out * count


def attention_flops(
  embed: int, q_features: int, kv_features: int, q_length: int, kv_length: int
) -> int:
  """One attention layer: q and out projections, k and v projections, then q k^T and probs v.

  q_features is heads * head_dim, kv_features kv_heads * head_dim; the score
  matrix counts in full (not the causal half), as the usual MFU accounting does.
  """
  return (
    dense_flops(q_length, embed, q_features, 2)
    + dense_flops(kv_length, embed, kv_features, 2)
    + 2 * q_length * kv_length * q_features * 2
  )


def visible_pairs(
  q_length: int, kv_length: int, *, causal: bool = False, window: int | None = None
) -> int:
  """Query-key pairs a mask lets through (pretrain.models.attention.masks' rules, aligned at index 0).

  causal: key index <= query index; window: |query index - key index| < window
  (with causal, the last `window` keys up to and including the query).
  """
  q = np.arange(q_length)
  low = np.maximum(q - window + 1, 0) if window else np.zeros_like(q)
  high = q if causal else (q + window - 1 if window else np.full_like(q, kv_length - 1))
  return int(np.maximum(np.minimum(high, kv_length - 1) - low + 1, 0).sum())


def masked_attention_flops(
  q_features: int,
  q_length: int,
  kv_length: int,
  *,
  causal: bool = False,
  window: int | None = None,
) -> int:
  """The share of attention_flops' q k^T and probs v matmuls that falls on masked query-key pairs.

  attention_flops minus this is attention as a block-skipping kernel computes
  it: causal about halves the two matmuls, a sliding window bounds them to
  about length x window pairs (the xla backend computes the full matrix and
  masks it).
  """
  hidden = q_length * kv_length - visible_pairs(q_length, kv_length, causal=causal, window=window)
  return 2 * hidden * q_features * 2
