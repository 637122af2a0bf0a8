"""Contractions with their backward written out: `dtype` inputs, float32 accumulation, in the backward too.

Every matmul of the models (layers.matmul, the xla attention kernel's einsums) takes its inputs in
the compute dtype and accumulates in float32. Differentiated as it is, such a contraction's two
backward contractions run in float32: jax upcasts the bfloat16 operand to meet the float32
cotangent, then rounds the result to bfloat16 and back. On an accelerator that costs little
(its default-precision float32 matmul is a bfloat16 pass), but on a CPU with bfloat16 units
(AVX-512-BF16, AMX) it runs two thirds of the step's matmul FLOPs at the float32 rate. So on CPU a
contraction has a custom VJP that casts the cotangent to the compute dtype and runs both backward
contractions with `dtype` inputs and float32 accumulation, as mixed-precision training does; its
input gradients come out in float32 (not rounded to bfloat16 first).

In float32 the custom VJP computes what jax's transpose computes, with the kernel gradient as an
einsum over the token axes: XLA:CPU then reads the cotangent from memory. From jax's transpose it
makes a transposed copy of each cotangent and fuses into that copy the whole elementwise chain of
the residual stream's gradient from the top of the stack down, so each layer's backward recomputes
the layers above it (a sixth of a 12-layer GPT-2 small float32 step; BENCHMARKS.md, AMX).
Accelerator programs are unchanged: the custom VJP applies only where `target_platform()` is 'cpu'.

`add` is the same idea for an attention bias: on CPU its gradient, a sum over the leading axes it is
broadcast along, runs as a dot with a vector of ones (XLA:CPU's sum over leading axes is ~30x
slower).
"""

import contextlib
import functools
import math

import jax
import jax.numpy as jnp

_PLATFORMS = {"cuda": "gpu", "rocm": "gpu"}  # Device platform -> the name the models use.


def target_platform() -> str:
  """The platform the calls traced now are compiled for: 'cpu', 'gpu' or 'tpu'.

  That of the devices of the mesh in context (jax.set_mesh, which pretrain.sharding.mesh_context
  enters), so a step traced over a mesh of compile-only TPU or GPU devices on a CPU host gets TPU or
  GPU kernels; without a mesh, jax.default_backend(). jax keys its trace caches on the mesh in
  context, so a function traced for one mesh is traced again for another.
  """
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  platform = getattr(device, "platform", None) or jax.default_backend()
  return _PLATFORMS.get(platform, platform)


_JAX_TRANSPOSE = [False]  # Set by jax_transpose(): the benchmark's A/B of the two backward passes.


@contextlib.contextmanager
def jax_transpose():
  """Within it, contractions traced take jax's own transpose on every platform (`bench --jax_transpose`)."""
  _JAX_TRANSPOSE[0] = True
  try:
    yield
  finally:
    _JAX_TRANSPOSE[0] = False


def custom_backward() -> bool:
  """Whether contractions take the custom VJP: when traced for CPU (see the module docstring)."""
  return not _JAX_TRANSPOSE[0] and target_platform() == "cpu"


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """jnp.einsum(spec, a, b) with `dtype` inputs and a float32 result (see the module docstring).

  spec: a two-operand einsum 'ab,bc->ac' in which every index of an operand also appears in the
  other operand or in the output (so each gradient is an einsum of the same kind).
  """
  if not custom_backward():
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return _einsum(spec, jnp.dtype(dtype).name, a.dtype.name, b.dtype.name, a, b)


def _specs(spec: str) -> tuple[str, str, str]:
  inputs, out = spec.replace(" ", "").split("->")
  a, b = inputs.split(",")
  for operand, other in ((a, b + out), (b, a + out)):
    if len(set(operand)) != len(operand) or not set(operand) <= set(other):
      raise ValueError(
        f"einsum {spec!r}: an index summed within one operand has no gradient einsum"
      )
  return a, b, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _einsum(spec, dtype, a_dtype, b_dtype, a, b):
  del a_dtype, b_dtype
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _einsum_forward(spec, dtype, a_dtype, b_dtype, a, b):
  del a_dtype, b_dtype
  a, b = a.astype(dtype), b.astype(dtype)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32), (a, b)


def _einsum_backward(spec, dtype, a_dtype, b_dtype, residuals, g):
  a, b = residuals
  a_spec, b_spec, out_spec = _specs(spec)
  g = g.astype(dtype)
  da = _contract(out_spec, b_spec, a_spec, g, b)
  db = _contract(a_spec, out_spec, b_spec, a, g)
  return da.astype(a_dtype), db.astype(b_dtype)


def _contract(x_spec: str, y_spec: str, out_spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """einsum(x, y) with float32 accumulation; in low precision, the left operand summed over its minor axis.

  XLA:CPU runs a bfloat16 dot whose left operand is summed over a single axis that is not its
  minor one (attention's key and value gradients, summed over the query axis) as a float32 Eigen
  dot, both operands converted first: 2-5x slower than its bfloat16 library dot. The left operand
  is the one whose free axes lead the output (XLA orders a dot's output batch, left, right); a
  plain transpose would be folded back into the dot, so it is transposed in memory first.
  """
  summed = [i for i in x_spec if i not in out_spec]  # Both operands' (none is summed in one alone).
  # With two summed axes XLA copies the operand itself.
  if x.dtype != jnp.float32 and len(summed) == 1:
    free = [i for i in out_spec if i not in x_spec or i not in y_spec]
    if free and free[0] not in x_spec:
      x_spec, y_spec, x, y = y_spec, x_spec, y, x
    if x_spec[-1] != summed[0]:
      order = "".join(i for i in x_spec if i != summed[0]) + summed[0]
      x = _transpose_in_memory(x, tuple(x_spec.index(i) for i in order))
      x_spec = order
  return jnp.einsum(f"{x_spec},{y_spec}->{out_spec}", x, y, preferred_element_type=jnp.float32)


def _transpose_in_memory(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
  """jnp.transpose(x, perm) as a copy in the compiled program: one axis split in two around it.

  XLA's simplifier folds a transpose into the dot reading it; it does not recognise a transpose
  of a reshape that splits an axis (the pair stays adjacent and in order, so the values are those
  of jnp.transpose). Where no moved axis splits, the plain transpose.
  """
  moved = next((a for a in perm if perm.index(a) != a and x.shape[a] % 2 == 0), None)
  if moved is None:
    return jnp.transpose(x, perm)
  split = x.shape[:moved] + (x.shape[moved] // 2, 2) + x.shape[moved + 1 :]
  axes = {a: (a,) if a < moved else (a, a + 1) if a == moved else (a + 1,) for a in range(x.ndim)}
  out_shape = tuple(x.shape[a] for a in perm)
  return x.reshape(split).transpose([s for a in perm for s in axes[a]]).reshape(out_shape)


_einsum.defvjp(_einsum_forward, _einsum_backward)


def add(x: jax.Array, b: jax.Array) -> jax.Array:
  """x + b, b broadcast over leading axes of x (an attention bias); on CPU b's gradient is a dot.

  b's gradient sums x's cotangent over the axes b is broadcast along. XLA:CPU runs a sum over
  leading (major) axes ~30x slower than the same sum as a dot with a vector of ones (T5's relative
  position bias, [batch, heads, q, k] summed over batch: 33 ms against 1.1 ms), so on CPU the
  gradient is that dot. Where b broadcasts along an axis that is not leading, plain x + b. (Dense
  biases and norm scales, summed over the tokens, were no faster this way: not used there.)
  """
  summed = _leading_broadcast(x, b)
  return _add(summed, b.shape, x, b) if summed else x + b


def _leading_broadcast(x: jax.Array, b: jax.Array) -> int:
  """How many leading axes of x `b` is broadcast along, where `add` takes its custom VJP; else 0."""
  if not custom_backward() or x.dtype != b.dtype:
    return 0
  shape = (1,) * (x.ndim - b.ndim) + b.shape
  summed = 0
  while summed < x.ndim and shape[summed] == 1 and x.shape[summed] != 1:
    summed += 1
  return summed if shape[summed:] == x.shape[summed:] else 0  # Not along a later axis too.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _add(summed, b_shape, x, b):
  del summed, b_shape
  return x + b


def _add_forward(summed, b_shape, x, b):
  del summed, b_shape
  return x + b, None


def _add_backward(summed, b_shape, residuals, g):
  del residuals
  rows = g.reshape(math.prod(g.shape[:summed]), -1)  # [summed axes, b's elements]
  return g, (jnp.ones((rows.shape[0],), g.dtype) @ rows).reshape(b_shape)


_add.defvjp(_add_forward, _add_backward)
