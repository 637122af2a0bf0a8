"""Every attention backend x mask kind compiled for its real target on a CPU host (no accelerator):
splash_tpu for a TPU v5e slice, pallas_gpu and cuDNN for an H100; and `auto` choosing, from the mesh
it is traced over, a kernel that compiles there.

Needs the ahead-of-time compilers (libtpu; jax's CUDA plugin): each target's tests skip when its
compiler is not installed. cuDNN's kernel needs the cuDNN library too (the nvidia-cudnn-cu12
wheel, in the aot extra); without it the backend says so and falls back, which is what the tests
then check.
"""

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain import sharding
from pretrain.models import attention
from pretrain.plan.targets import H100_SXM_TARGET_CONFIG

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 128, 2, 64  # splash needs lengths in multiples of 128.
# Patterns of the kernels in a compiled program: forward and backward.
KERNELS = {
  "splash_tpu": ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"),
  "pallas_gpu": ("mha_forward", "mha_backward"),
  # fmhaSoftmax, or fmhaScaleBiasSoftmax when a dense mask goes in as a bias.
  "cudnn": (r'"__cudnn\$fmha\w*Softmax"', r'"__cudnn\$fmha\w*SoftmaxBackward"'),
}


def has_kernel(text: str, kernel: str) -> bool:
  return all(re.search(pattern, text) for pattern in KERNELS[kernel])


def has_any_kernel(text: str) -> bool:
  return any(re.search(p, text) for patterns in KERNELS.values() for p in patterns)


SEGMENTS = np.array([[1] * 50 + [2] * 60 + [0] * 18, [1] * LENGTH], np.int32)
MASKS = {
  "padding": lambda: attention.AttentionMask(
    input_mask=jnp.asarray((SEGMENTS > 0).astype(np.int32))
  ),
  "segments": lambda: attention.AttentionMask(segment_ids=jnp.asarray(SEGMENTS)),
  "causal": lambda: attention.AttentionMask(causal=True),
  "sliding_window": lambda: attention.AttentionMask(causal=True, sliding_window=32),
  "prefix": lambda: attention.AttentionMask(causal=True, prefix_length=jnp.array([10, 20])),
}
# Why a kernel cannot take a mask kind: its recorded fallback reason.
UNSUPPORTED = {
  ("splash_tpu", "prefix"): "splash_tpu has no per-example prefix-LM mask",
  ("pallas_gpu", "sliding_window"): "pallas_gpu has no sliding window",
  ("pallas_gpu", "prefix"): "pallas_gpu has no per-example prefix-LM mask",
}


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


def has_cudnn() -> bool:
  """Whether jax's CUDA plugin finds a cuDNN library on this host (what cuDNN's trace-time check needs)."""
  from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top

  try:
    return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
  except RuntimeError:
    return False


@pytest.fixture(scope="module")
def tpu_slice():
  """The four chips of a compile-only TPU v5e 2x2 slice."""
  if not _installed("libtpu"):
    pytest.skip("libtpu is not installed (the aot extra)")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  topology = topologies.get_topology_desc(
    platform="tpu",
    topology_name="v5e:2x2",
    chip_config_name="default",
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
    wrap=(True, True, False),
  )
  return topology.devices


@pytest.fixture(scope="module")
def tpu_mesh(tpu_slice):
  """One chip of it."""
  return jax.sharding.Mesh(np.array(tpu_slice[:1]), ("data",))


@pytest.fixture(scope="module")
def gpu_mesh():
  """One compile-only H100 (the planner's H100 target config, with where its values come from)."""
  if not _installed("jax_plugins.xla_cuda12"):
    pytest.skip("jax's CUDA plugin is not installed (the aot extra)")
  # jax finds the wheel's libcudnn.so.9 through its CUDA plugin's rpath (the same site-packages'
  # nvidia/cudnn/lib), no GPU backend needed; a wheel elsewhere (PYTHONPATH, --target) is not
  # found, and the cuDNN tests would quietly check the fallback instead.
  if _installed("nvidia.cudnn"):
    assert has_cudnn(), "nvidia-cudnn-cu12 is installed, but not beside jax's CUDA plugin"
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  topology = topologies.get_topology_desc(
    platform="cuda", topology="1x1x1", target_config=H100_SXM_TARGET_CONFIG
  )
  return jax.sharding.Mesh(np.array(topology.devices), ("data",))


def compile_for(mesh, backend, kinds, spec=jax.sharding.PartitionSpec()):
  """(compiled text, recorded resolutions) of forward and backward of attention under each mask kind."""

  def loss(q, k, v):
    total = 0.0
    for kind in kinds:
      out = attention.dot_product_attention(
        q, k, v, mask=MASKS[kind](), backend=backend, dtype=jnp.bfloat16, self_attention=True
      )
      total += jnp.sum(out)
    return total

  shape = jax.ShapeDtypeStruct(
    (BATCH, LENGTH, HEADS, HEAD_DIM),
    jnp.bfloat16,
    sharding=jax.sharding.NamedSharding(mesh, spec),
  )
  # The planner's seam: the mesh in context says what to compile for, not the CPU host.
  with sharding.mesh_context(mesh), attention.recording() as resolutions:
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    text = step.lower(shape, shape, shape).compile().as_text()
  return text, resolutions


def check_kernel(text, resolutions, requested, backend, kernel, reason="requested"):
  assert resolutions == [(requested, backend, reason)]
  assert has_kernel(text, kernel), f"no {kernel} kernel in the program compiled for {backend}"


def check_fallback(text, resolutions, requested, reason):
  assert resolutions == [(requested, "xla", reason)]
  assert not has_any_kernel(text)


@pytest.mark.parametrize("kind", list(MASKS))
@pytest.mark.parametrize("backend, mesh", [("splash_tpu", "tpu_mesh"), ("pallas_gpu", "gpu_mesh")])
def test_pallas_kernels_compile_for_their_target(request, backend, mesh, kind):
  text, resolutions = compile_for(request.getfixturevalue(mesh), backend, [kind])
  if (backend, kind) in UNSUPPORTED:
    check_fallback(text, resolutions, backend, UNSUPPORTED[backend, kind])
  else:
    check_kernel(text, resolutions, backend, backend, backend)


@pytest.mark.parametrize("kind", list(MASKS))
def test_cudnn_compiles_for_gpu_or_says_why_not(gpu_mesh, kind):
  text, resolutions = compile_for(gpu_mesh, "dot_product_attention", [kind])
  if has_cudnn():
    check_kernel(text, resolutions, "dot_product_attention", "dot_product_attention", "cudnn")
    return
  ((requested, backend, reason),) = resolutions
  assert (requested, backend) == ("dot_product_attention", "dot_product_attention")
  assert reason == (
    "requested; cuDNN refused the call (RuntimeError: cuDNN not found.), so "
    "jax.nn.dot_product_attention runs its XLA version"
  )
  assert not has_kernel(text, "cudnn")


def test_auto_picks_what_compiles_for_each_target(tpu_mesh, gpu_mesh):
  kinds = list(MASKS)
  text, resolutions = compile_for(tpu_mesh, "auto", kinds)
  assert sorted(resolutions) == [
    ("auto", "splash_tpu", "auto on tpu"),
    ("auto", "xla", "auto on tpu: splash_tpu has no per-example prefix-LM mask"),
  ]
  assert has_kernel(text, "splash_tpu")

  text, resolutions = compile_for(gpu_mesh, "auto", kinds)
  if has_cudnn():  # cuDNN takes every mask kind (those it has no native form for, as a dense mask).
    assert resolutions == [("auto", "dot_product_attention", "auto on gpu")]
    assert has_kernel(text, "cudnn")
    return
  refused = "cuDNN refused the call (RuntimeError: cuDNN not found.)"
  assert sorted(resolutions) == [
    ("auto", "pallas_gpu", f"auto on gpu; {refused}"),
    ("auto", "xla", f"auto on gpu: {refused}; pallas_gpu has no per-example prefix-LM mask"),
    ("auto", "xla", f"auto on gpu: {refused}; pallas_gpu has no sliding window"),
  ]
  assert has_kernel(text, "pallas_gpu")


def test_kernels_run_per_shard_of_a_mesh_of_several_devices(tpu_slice, gpu_mesh):
  """XLA cannot partition a Pallas kernel: over 2 x 2 chips it runs per shard (batch over data,
  heads over tensor), over 2 GPUs per batch shard, with no collective of its own."""
  mesh = jax.sharding.Mesh(np.array(tpu_slice).reshape(2, 2), ("data", "tensor"))
  spec = jax.sharding.PartitionSpec("data", None, "tensor", None)
  text, resolutions = compile_for(mesh, "splash_tpu", ["segments", "padding"], spec)
  assert resolutions == [("splash_tpu", "splash_tpu", "requested")]
  assert has_kernel(text, "splash_tpu")
  assert "all-gather" not in text and "all-to-all" not in text
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  gpus = topologies.get_topology_desc(
    platform="cuda", topology="1x1x2", target_config=H100_SXM_TARGET_CONFIG
  )
  mesh = jax.sharding.Mesh(np.array(gpus.devices), ("data",))
  text, resolutions = compile_for(
    mesh, "pallas_gpu", ["segments", "causal"], jax.sharding.PartitionSpec("data")
  )
  assert resolutions == [("pallas_gpu", "pallas_gpu", "requested")]
  assert has_kernel(text, "pallas_gpu") and "all-gather" not in text
