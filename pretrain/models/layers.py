"""Small building blocks shared by every model family.

Every parameter carries logical axis names (see pretrain/sharding.py for the
table that maps them onto mesh axes). Parameters are always float32; `dtype` is
the compute dtype of the matmuls only. Matmuls take their inputs in `dtype` and
accumulate and return float32: on CPU a bfloat16-output matmul is slower than a
float32 one, while bfloat16 inputs with float32 accumulation are ~3.5x faster,
and on accelerators float32 accumulation is what the hardware does anyway.
On CPU the backward pass's matmuls take bfloat16 inputs too (pretrain/models/precision.py).
LayerNorm, softmax, GELU and residual math stay in float32.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.models import precision

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

DTYPES = ("float32", "bfloat16")
# jax.checkpoint_policies that are policies themselves (the others are factories).
_JAX_REMAT_POLICIES = (
  "everything_saveable",
  "nothing_saveable",
  "dots_saveable",
  "dots_with_no_batch_dims_saveable",
  "checkpoint_dots",
  "checkpoint_dots_with_no_batch_dims",
)
REMAT_POLICIES = ("none", "full") + _JAX_REMAT_POLICIES


def check_config_keys(cls, d) -> None:
  """Refuses keys that are not fields of the config dataclass `cls`, naming them and the valid ones."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise PretrainError(
      f"unknown {cls.__name__} keys: {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
    )


def check_dtype_and_remat(dtype: str, remat: str) -> None:
  """Raises PretrainError for a compute dtype or remat policy name no model knows."""
  if dtype not in DTYPES:
    raise PretrainError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
  if remat not in REMAT_POLICIES:
    raise PretrainError(f"unknown remat_policy {remat!r}; valid: {', '.join(REMAT_POLICIES)}")


def remat_policy(name: str):
  """The jax.checkpoint policy for a config name ('full' saves nothing)."""
  if name not in REMAT_POLICIES or name == "none":
    raise PretrainError(f"no remat policy for {name!r}; valid: {', '.join(REMAT_POLICIES[1:])}")
  return None if name == "full" else getattr(jax.checkpoint_policies, name)


def default_init(initializer_range: float) -> Initializer:
  """BERT's initializer: normal truncated at two standard deviations."""
  return nn.initializers.truncated_normal(stddev=initializer_range)


def scaled_init(init: Initializer, factor: float) -> Initializer:
  """init's draw times factor (the same draw, then the scaling: a family's std relative to a shared one)."""

  def scaled(key, shape, dtype=jnp.float32):
    x = init(key, shape, dtype)
    return x * jnp.asarray(factor, x.dtype)

  return scaled


def matmul(x: Array, kernel: Array, contract: tuple[int, int], dtype: DType) -> Array:
  """Contracts dim contract[0] of x with dim contract[1] of kernel; float32 result.

  On CPU the backward contractions are written out and also take `dtype` inputs
  (pretrain.models.precision); elsewhere this is the one dot_general.
  """
  if precision.custom_backward() and contract[0] == x.ndim - 1 and kernel.ndim == 2:
    lead = "abcdefgh"[: x.ndim - 1]
    kernel_spec = "kn" if contract[1] == 0 else "nk"
    return precision.einsum(f"{lead}k,{kernel_spec}->{lead}n", x, kernel, dtype)
  return jax.lax.dot_general(
    x.astype(dtype),
    kernel.astype(dtype),
    (((contract[0],), (contract[1],)), ((), ())),
    preferred_element_type=jnp.float32,
  )


class Dense(nn.Module):
  """y = x @ kernel + bias over the last axis of x, with a 2-D `[in, out]` kernel.

  Kernels stay 2-D (multi-head layouts are reshapes of the activations) because
  linen's >2-D logical kernel specs fail under a mesh.
  """

  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = True
  dtype: DType = jnp.float32
  kernel_init: Initializer = default_init(0.02)
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
      (x.shape[-1], self.features),
      jnp.float32,
    )
    y = matmul(x, kernel, (x.ndim - 1, 0), self.dtype)
    if self.use_bias:
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(self.bias_init, (self.kernel_axes[1],)),
        (self.features,),
        jnp.float32,
      )
      y = y + bias
    return y


class Embed(nn.Module):
  """A `[vocab, embed]` lookup table, optionally reused as a tied output layer."""

  num_embeddings: int
  features: int
  axes: tuple[str, str] = ("vocab", "embed")
  dtype: DType = jnp.float32
  embedding_init: Initializer = default_init(0.02)

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(self.embedding_init, self.axes),
      (self.num_embeddings, self.features),
      jnp.float32,
    )

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0)  # [..., embed] float32

  def attend(self, x: Array) -> Array:
    """x @ table.T: scores of x against every row, e.g. tied output logits."""
    return matmul(x, self.embedding, (x.ndim - 1, 1), self.dtype)  # [..., vocab] float32


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis, in float32 (no mean, no bias): T5's LayerNorm, and QK-norm."""

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      (x.shape[-1],),
      jnp.float32,
    )
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon) * scale


class LayerNorm(nn.Module):
  """Layer normalization over the last axis, computed in float32."""

  epsilon: float = 1e-12
  axes: tuple[str, ...] = ("norm",)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), self.axes),
      (features,),
      jnp.float32,
    )
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes),
      (features,),
      jnp.float32,
    )
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def dropout(x: Array, rate: float, rng: Array) -> Array:
  """Inverted dropout: zeroes each element with probability ~rate, scales the rest.

  The drop probability is rate rounded to a multiple of 2**-16 (0.1 -> 0.100006)
  so that one 32-bit random word serves two elements: random bits are the
  costliest part of dropout on CPU. The optimization barrier asks XLA to
  materialize the mask once rather than fuse the generator into every consumer
  (forward and backward); XLA:CPU expands barriers before fusion, so on CPU the
  bits are still computed in each consumer (BERT-base's bf16 gradient: 103
  fusions hold the generator).
  """
  if rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  threshold = min(round(rate * 2**16), 2**16 - 1)
  *lead, last = x.shape
  words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
  keep = jax.lax.optimization_barrier(halves >= np.uint16(threshold))
  scale = np.float32(2**16 / (2**16 - threshold))
  return jnp.where(keep, x * scale.astype(x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """`dropout` with a key from the 'dropout' rng stream; identity when deterministic."""

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate <= 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))
