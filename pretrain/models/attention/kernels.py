"""The kernels behind the backends; each takes `[batch, length, heads, head_dim]` q, k, v and returns float32.

They trust their caller (`functional.dot_product_attention`) to have checked
shapes and chosen a backend that supports the call (backends.py).
"""

import concurrent.futures
import dataclasses
import functools

import jax
import jax.numpy as jnp

from pretrain import sharding
from pretrain.models import layers
from pretrain.models import precision
from pretrain.models.attention.masks import AttentionMask
from pretrain.models.attention.masks import dense_mask

Array = jax.Array


def xla_attention(
  query, key, value, bias, mask, dropout_rng, dropout_rate, deterministic, dtype, scale, soft_cap
):
  batch, q_length, num_heads, head_dim = query.shape
  kv_length, num_kv_heads = key.shape[1], key.shape[2]
  groups = num_heads // num_kv_heads
  # Scaling q costs length*head_dim multiplies per head instead of length**2.
  if scale != 1.0:
    query = query * jnp.asarray(scale, query.dtype)
  # Heads-major copies make both matmuls plain batched matmuls; XLA:CPU runs
  # this ~25% faster (fwd+bwd) than the einsums over [batch, length, heads, head_dim].
  # precision.einsum casts to dtype (and, on CPU, keeps the backward's matmuls in dtype too).
  query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
  if groups == 1:
    logits = precision.einsum("bhqd,bhkd->bhqk", query, key, dtype)  # [batch, heads, q, kv]
  else:
    # Grouped heads: query head h = kv_head * groups + g reads key/value head kv_head.
    query = query.reshape(
      batch, num_kv_heads, groups, q_length, head_dim
    )  # [batch, kv_heads, groups, q, d]
    logits = precision.einsum("bhgqd,bhkd->bhgqk", query, key, dtype)
    logits = logits.reshape(batch, num_heads, q_length, kv_length)
  if soft_cap is not None:
    logits = soft_cap * jnp.tanh(logits / soft_cap)
  if bias is not None:
    logits = precision.add(logits, bias.astype(jnp.float32))  # On CPU, its gradient as a dot.
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    probs = layers.dropout(probs, dropout_rate, dropout_rng)
  if groups == 1:
    out = precision.einsum("bhqk,bhkd->bhqd", probs, value, dtype)
  else:
    probs = probs.reshape(batch, num_kv_heads, groups, q_length, kv_length)
    out = precision.einsum("bhgqk,bhkd->bhgqd", probs, value, dtype)
    out = out.reshape(batch, num_heads, q_length, head_dim)
  return jnp.swapaxes(out, 1, 2)  # [batch, q_length, heads, head_dim]


class KernelUnavailable(Exception):
  """A kernel refused a call while it was traced (cuDNN missing on the host, a shape it lacks)."""


def jax_nn_attention(query, key, value, bias, mask, dtype, scale, use_cudnn: bool):
  """jax.nn.dot_product_attention, with cuDNN's kernel when `use_cudnn` (else its XLA version).

  Causal goes in as is_causal and a causal window as local_window_size (cuDNN skips the masked
  blocks); the rest of the mask goes in dense. Raises KernelUnavailable when cuDNN refuses the call
  (it checks its library, shapes and head size while tracing).
  """
  is_causal, window = False, None
  if isinstance(mask, AttentionMask) and mask.causal and mask.prefix_length is None:
    is_causal = True
    if mask.sliding_window is not None:
      window = (mask.sliding_window - 1, 0)
    mask = dataclasses.replace(mask, causal=False, sliding_window=None)
  lengths = (query.shape[1], key.shape[1])
  mask = dense_mask(mask, *lengths)
  # cuDNN adds the mask as a bias, and takes a bias only at full lengths (batch, heads may be 1).
  mask, bias = (
    None if x is None else jnp.broadcast_to(x, (1,) * (4 - x.ndim) + x.shape[:-2] + lengths)
    for x in (mask, bias)
  )
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  try:
    out = jax.nn.dot_product_attention(
      query,
      key,
      value,
      bias=bias,
      mask=mask,
      scale=scale,
      is_causal=is_causal,
      local_window_size=window,
      implementation="cudnn" if use_cudnn else "xla",
    )
  except (ValueError, NotImplementedError, RuntimeError) as e:
    if not use_cudnn:
      raise
    raise KernelUnavailable(f"cuDNN refused the call ({type(e).__name__}: {e})") from e
  return out.astype(jnp.float32)


def _kernel_segment_ids(
  mask: AttentionMask | None, batch: int, q_length: int, kv_length: int, self_attention: bool
) -> tuple[Array, Array] | None:
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


def pallas_gpu_attention(query, key, value, mask, dtype, scale, interpret, self_attention):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # pylint: disable=g-import-not-at-top

  batch, q_length, num_heads, _ = query.shape
  groups = num_heads // key.shape[2]
  if groups > 1:  # The kernel has no grouped heads: repeat each key/value head for its queries.
    key, value = (jnp.repeat(x, groups, axis=2) for x in (key, value))
  ids = _kernel_segment_ids(mask, batch, q_length, key.shape[1], self_attention)
  out = gpu_attention.mha(
    query.astype(dtype),
    key.astype(dtype),
    value.astype(dtype),
    None if ids is None else ids[0],  # Shared by queries and keys.
    sm_scale=scale,
    causal=mask is not None and mask.causal,
    interpret=interpret,
  )
  return out.astype(jnp.float32)  # [batch, q_length, heads, head_dim]


def _splash_block(length: int) -> int:
  return next(b for b in (512, 256, 128) if length % b == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(*args):
  """A splash kernel for one example `[heads, length, head_dim]` (built once per shape and mask).

  The kernel holds arrays of mask metadata; made concrete, it serves every later trace. They are
  made in a thread of their own, outside the caller's trace and mesh: under a mesh of compile-only
  devices (a TPU program compiled on a CPU host) jax could not evaluate them on that mesh.
  """
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="splash-kernel") as builder:
    return builder.submit(_make_splash_kernel, *args).result()


def _make_splash_kernel(
  num_heads: int,
  q_length: int,
  kv_length: int,
  causal: bool,
  window: int | None,
  soft_cap: float | None,
  interpret: bool,
):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  shape = (q_length, kv_length)
  if window is not None:
    head_mask = splash.LocalMask(shape, (window - 1, 0 if causal else window - 1), offset=0)
  elif causal:
    head_mask = splash.CausalMask(shape)
  else:
    head_mask = splash.FullMask(shape)
  bq, bkv = _splash_block(q_length), _splash_block(kv_length)
  block_sizes = splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bkv,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bkv,
    block_q_dq=bq,
    block_kv_dq=bkv,
  )
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(
      splash.MultiHeadMask([head_mask] * num_heads),
      block_sizes=block_sizes,
      head_shards=1,
      q_seq_shards=1,
      attn_logits_soft_cap=soft_cap,
      interpret=interpret,
    )


def splash_attention(query, key, value, mask, dtype, scale, soft_cap, interpret, self_attention):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  batch, q_length, num_heads, _ = query.shape
  kv_length = key.shape[1]
  kernel = _splash_kernel(
    num_heads,
    q_length,
    kv_length,
    mask is not None and mask.causal,
    None if mask is None else mask.sliding_window,
    soft_cap,
    interpret,
  )
  # Splash has no scale argument: scale q instead.
  query = query * jnp.asarray(scale, query.dtype)
  query, key, value = (
    jnp.swapaxes(x, 1, 2).astype(dtype) for x in (query, key, value)
  )  # [batch, heads, length, d]
  ids = _kernel_segment_ids(mask, batch, q_length, kv_length, self_attention)
  if ids is None:
    out = jax.vmap(kernel)(query, key, value)
  else:
    out = jax.vmap(
      lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=splash.SegmentIds(q=qi, kv=ki))
    )(query, key, value, *ids)
  return jnp.swapaxes(out, 1, 2).astype(jnp.float32)  # [batch, q_length, heads, head_dim]


def per_shard(kernel, query, key, value, mask: AttentionMask | None):
  """kernel(query, key, value, mask) run on each device's shard of the mesh in context.

  XLA cannot partition a Pallas kernel by itself ("Mosaic kernels cannot be automatically
  partitioned"): under a mesh of several devices the kernel runs in a shard_map, its batch split
  over the mesh's batch axes and its heads over 'tensor' where they divide; attention never
  mixes examples or heads, so no collective is needed. One device (or no mesh): a plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(query, key, value, mask)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  batch_axes = tuple(a for a in sharding.BATCH_AXES if sizes.get(a, 1) > 1)
  if query.shape[0] % max(1, _prod(sizes[a] for a in batch_axes)):
    batch_axes = ()
  tensor = sizes.get("tensor", 1)
  heads = (
    "tensor" if tensor > 1 and not (query.shape[2] % tensor or key.shape[2] % tensor) else None
  )
  batch = batch_axes or None
  qkv = jax.sharding.PartitionSpec(batch, None, heads, None)
  specs = (qkv, qkv, qkv, jax.tree.map(lambda _: jax.sharding.PartitionSpec(batch), mask))
  args = (query, key, value, mask)
  if (
    jax.sharding.AxisType.Explicit in mesh.axis_types
  ):  # shard_map takes them as they are laid out.
    args = jax.tree.map(jax.sharding.reshard, args, specs)
  return jax.shard_map(
    kernel,
    mesh=mesh,
    in_specs=specs,
    out_specs=qkv,
    check_vma=False,  # The Pallas calls carry no varying-axes types.
  )(*args)


def _prod(values) -> int:
  out = 1
  for v in values:
    out *= v
  return out
