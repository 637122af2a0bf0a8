"""The matmul peak: a jitted [M, K] x [K, N] matmul of the model's FFN shapes, and torch's Linear."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from pretrain.bench import batches
from pretrain.bench.timing import Case


def matmul_shapes(config) -> list[tuple[int, int, int]]:
  """The FFN's two matmuls at the config's tokens per step: [M, K] x [K, N]."""
  task = batches.bench_task(config)
  hidden, ffn = batches.family_reference(task.name).ffn_dims(task)
  tokens = int(config.train.batch_size) * task.tokens_per_example
  return [(tokens, hidden, ffn), (tokens, ffn, hidden)]


def _report(engine: str, dtype: str, shape: tuple[int, int, int]):
  m, k, n = shape
  return lambda t: {
    "engine": engine,
    "dtype": dtype,
    "shape": f"{m}x{k}x{n}",
    "flops_per_sec": 2 * m * k * n / t.step_seconds,
  }


def matmul_case(shape: tuple[int, int, int], dtype: str) -> Case:
  """A jitted [M, K] x [K, N] matmul, `dtype` inputs, float32 accumulation (the model's matmuls)."""
  m, k, n = shape
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal([m, k], np.float32), dtype)
  b = jnp.asarray(rng.standard_normal([k, n], np.float32), dtype)
  matmul = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32))

  def run(count):
    for _ in range(count):
      r = matmul(a, b)
    r.block_until_ready()

  return Case(
    f"jax matmul {dtype} {m}x{k}x{n}",
    run,
    _report("jax", dtype, shape),
    warmup=2,
    window_seconds=0.5,
  )


def torch_matmul_case(shape: tuple[int, int, int], autocast: bool) -> Case:
  """The same matmul as torch's Linear does it, in float32 or under bfloat16 autocast."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  m, k, n = shape
  x, w = torch.randn(m, k), torch.randn(n, k)

  def run(count):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      for _ in range(count):
        torch.nn.functional.linear(x, w)

  dtype = "bf16-autocast" if autocast else "float32"
  return Case(
    f"torch matmul {dtype} {m}x{k}x{n}",
    run,
    _report("torch", dtype, shape),
    warmup=1,
    window_seconds=0.5,
  )
