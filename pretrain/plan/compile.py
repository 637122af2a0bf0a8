"""The run's own train step, built as training builds it and compiled ahead of time for a target's devices.

`plan(config, target)` resolves the config's mesh for the target's device count (pretrain.sharding),
builds the task (pretrain.families) and the step with pretrain.train's own builder
(pretrain.training.step.build_for_run), lowers it for the target's compile-only devices and compiles it there. No corpus
is read: the tokenizer is `tokenizer.path` when the config names one (a file, read as a run reads it),
else a stand-in of `tokenizer.vocab_size` pieces with the project's special ids, which gives the model
the shapes a tokenizer trained for the run would (pretrain.data.special_tokens.StandInTokenizer).
"""

import math
import os
import re
import time
from typing import Callable

from pretrain import config as config_lib
from pretrain import families
from pretrain import sharding
from pretrain.data import special_tokens
from pretrain.errors import PretrainError
from pretrain.plan import collectives as collectives_lib
from pretrain.plan import roofline
from pretrain.plan import targets as targets_lib

# JAX preallocates this fraction of a GPU's memory for its arrays (XLA_PYTHON_CLIENT_MEM_FRACTION).
GPU_MEMORY_FRACTION = 0.75


# libtpu 0.0.42.1's compiler recurses deeply when it costs the convolution windows of some
# rematerialised steps and overflows its fibers' default stack (SIGSEGV, "STACK OVERFLOW" in
# FusedSpatialMajorConvolution: gpt2_large and gpt2_xl on v5p-128, BENCHMARKS.md "Plan"); with
# 64 MiB fiber stacks those steps compile. Appended to LIBTPU_INIT_ARGS unless it sets the flag.
TPU_COMPILER_FLAGS = ("--fibers_default_thread_stack_size=67108864",)


def use_compile_only_platforms() -> None:
  """Keeps jax on the CPU for itself: the targets' devices are compile-only, never probed as hardware.

  Several processes may load libtpu at once here (a plan's parallel search) since none drives a chip.
  Before libtpu loads, its compiler gets TPU_COMPILER_FLAGS.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  args = os.environ.get("LIBTPU_INIT_ARGS", "")
  for flag in TPU_COMPILER_FLAGS:
    if flag.split("=")[0] not in args:
      args = f"{args} {flag}".strip()
  os.environ["LIBTPU_INIT_ARGS"] = args
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_platforms", "cpu")  # A no-op once a backend is up: that one is kept.


def aot_missing(platform: str) -> str | None:
  """Why a target of `platform` cannot be compiled here (the aot extra is absent), or None."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  module, what = ("libtpu", "libtpu") if platform == "tpu" else ("jax_plugins.xla_cuda12", "CUDA")
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    found = False
  if found:
    return None
  return (
    f"compiling for a {platform.upper()} target needs jax's {what} compiler: "
    "pip install -e '.[aot]' (jax[tpu] and jax[cuda12-local], no accelerator needed)"
  )


def plan_tokenizer(config):
  """The tokenizer the plan builds the task with: tokenizer.path's, or a stand-in of tokenizer.vocab_size."""
  path = config.tokenizer.get("path", "")
  if path:
    from pretrain.data import tokenizer_files  # pylint: disable=import-outside-toplevel

    return tokenizer_files.open_tokenizer(path)
  vocab = int(config.tokenizer.vocab_size)
  return special_tokens.StandInTokenizer(vocab, path=f"<tokenizer.vocab_size={vocab}>")


def _device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
  import jax  # pylint: disable=import-outside-toplevel

  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _refusal(message: str) -> str:
  """The compiler's out-of-memory message, shortened to its lines with numbers."""
  lines = [l.strip() for l in message.splitlines() if l.strip()]
  keep = [l for l in lines if re.search(r"\d", l) and ("memory" in l.lower() or "hbm" in l.lower())]
  return " ".join((keep or lines)[:3])[:600]


def plan(
  config,
  target: targets_lib.Target,
  *,
  hbm_limit_bytes: float | None = None,
  on_lowered: Callable[[dict], None] | None = None,
) -> dict:
  """Compiles the config's train step for `target`; the plan as a JSON-serialisable dict.

  `hbm_limit_bytes` is the memory a device may use (default: the chip's HBM; on GPU the fraction JAX
  preallocates, XLA_PYTHON_CLIENT_MEM_FRACTION or 0.75). `on_lowered` is given what is known before
  the compile (the settings, the state's bytes per device): what a crashed compile can still report.
  """
  missing = aot_missing(target.platform)
  if missing:
    raise PretrainError(missing)
  use_compile_only_platforms()
  from pretrain.models import attention  # pylint: disable=import-outside-toplevel
  from pretrain.training import step as step_lib  # pylint: disable=import-outside-toplevel

  config = config.copy_and_resolve_references()
  devices = target.devices()
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except PretrainError as e:
    raise PretrainError(f"--target={target.name} ({len(devices)} devices): {e}") from None
  config_lib.validate(config, mesh)
  task = families.get_task(config, plan_tokenizer(config))
  global_batch = int(config.train.batch_size)
  grad_accum = int(config.train.grad_accum_steps)
  t0 = time.perf_counter()
  with attention.recording() as resolutions:
    fns = step_lib.build_for_run(config, task, mesh)
    lowered = fns.lower_train_step()
  lower_seconds = time.perf_counter() - t0
  state_bytes = {
    "params": _device_bytes(fns.abstract_state.params),
    "optimizer": _device_bytes(fns.abstract_state.opt_state),
    "batch": _device_bytes(fns.abstract_batch),
  }
  if target.platform == "gpu":
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION))
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() in ("false", "0"):
      fraction = 1.0
    default_limit = fraction * target.chip.hbm_bytes
  else:
    default_limit = target.chip.hbm_bytes
  limit = float(hbm_limit_bytes) if hbm_limit_bytes else default_limit
  flops_per_step = task.train_flops_per_example() * global_batch
  result = {
    "target": target.name,
    "chip": target.chip.name,
    "devices": len(devices),
    "slices": target.num_slices,
    "hosts": target.num_hosts,
    "mesh": dict(mesh.shape),
    "task": task.name,
    "num_params": fns.num_params,
    "settings": {
      "batch_size": global_batch,
      "grad_accum_steps": grad_accum,
      "remat_policy": str(config.model.get("remat_policy", "none")),
      "scan_layers": bool(config.model.get("scan_layers", False)),
      "dtype": str(config.model.get("dtype", "float32")),
      "attention": sorted({f"{r} -> {b}" for r, b, _ in resolutions}),
    },
    "tokens_per_step": global_batch * task.tokens_per_example,
    "model_flops_per_step": flops_per_step,
    "lower_seconds": lower_seconds,
  }
  if on_lowered:
    on_lowered(dict(result, memory=dict(state_bytes, limit=limit, hbm=target.chip.hbm_bytes)))
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (jax's XlaRuntimeError)
    if "RESOURCE_EXHAUSTED" not in str(e):
      first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
      raise PretrainError(
        f"the {target.platform.upper()} compiler refused the step: {first}"
      ) from e
    result.update(
      compile_seconds=time.perf_counter() - t0,
      fits=False,
      refusal=_refusal(str(e)),
      memory=dict(state_bytes, limit=limit, hbm=target.chip.hbm_bytes),
    )
    return result
  result["compile_seconds"] = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  arguments = int(stats.argument_size_in_bytes)
  outputs = int(stats.output_size_in_bytes)
  aliased = int(stats.alias_size_in_bytes)
  temporary = int(stats.temp_size_in_bytes)
  code = int(stats.generated_code_size_in_bytes)
  peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0) or (
    arguments + outputs - aliased + temporary + code
  )
  memory = dict(
    state_bytes,
    arguments=arguments,
    outputs=outputs,
    aliased=aliased,
    temporary=temporary,
    code=code,
    peak=peak,
    limit=limit,
    hbm=target.chip.hbm_bytes,
  )
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  compiler_flops = float(cost.get("flops", 0.0)) or None
  bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
  found = collectives_lib.parse(
    compiled.as_text(),
    len(devices),
    lambda i, flat=list(mesh.devices.flat): target.island_of(flat[i]) if i < len(flat) else 0,
  )
  kinds = collectives_lib.by_kind(found)
  # Full remat runs each layer's forward twice: 4/3 of forward + backward. The compiler counts a
  # while loop's body once (scanned layers), so its figure can fall below the model's.
  estimate = (
    flops_per_step / len(devices) * (4 / 3 if result["settings"]["remat_policy"] == "full" else 1)
  )
  hbm_bytes = bytes_accessed
  if compiler_flops and compiler_flops >= estimate:
    flops, flops_source = compiler_flops, "compiler"
  else:
    flops = estimate
    flops_source = "model" + (
      " x 4/3 for full remat" if estimate > flops_per_step / len(devices) else ""
    )
    if compiler_flops and bytes_accessed:  # Its bytes miss the loop iterations its FLOPs miss.
      hbm_bytes = bytes_accessed * estimate / compiler_flops
  prediction = roofline.predict(
    target.chip,
    num_devices=len(devices),
    model_flops_per_step=flops_per_step,
    flops_per_device=flops,
    flops_source=flops_source,
    hbm_bytes_per_device=hbm_bytes,
    memory=memory,
    link_bytes_per_device=sum(k["link_bytes"] for k in kinds.values()),
    network_bytes_per_device=sum(k["network_bytes"] for k in kinds.values()),
    tokens_per_step=result["tokens_per_step"],
  )
  # A TPU compile that succeeded fits by the compiler's own account of the HBM; a GPU compile never
  # refuses, so there (and under an explicit limit) the peak is held against the limit.
  checked = target.platform == "gpu" or bool(hbm_limit_bytes)
  result.update(
    fits=peak <= limit or not checked,
    memory=memory,
    compiler_flops_per_device=compiler_flops,
    compiler_bytes_accessed_per_device=bytes_accessed,
    collectives=kinds,
    roofline=prediction,
  )
  if not result["fits"]:
    result["refusal"] = (
      f"peak {peak / 2**30:.2f} GiB per device exceeds the {limit / 2**30:.2f} GiB it may use"
    )
  return result
