"""host_allocator: where glibc malloc is tuned, and that a freed large buffer is then reused unfaulted."""

import json
import os
import subprocess
import sys

import pytest

from pretrain import host_allocator

# mallocs, fills and frees 64 MiB a few times on a worker thread, as XLA:CPU's threads do with a
# step's buffers; prints the minor page faults of the later rounds (the first maps the memory) and
# what host_allocator did at import.
_CHILD = """
import ctypes, json, resource, threading
import pretrain.host_allocator as h
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def one_round():
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  libc.free(p)
faults = []
def work():
  one_round()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(4):
    one_round()
  faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
t = threading.Thread(target=work)
t.start()
t.join()
print(json.dumps({"state": h.state, "faults_per_round": faults[0]}))
"""


def _run_child(**env):
  environ = {k: v for k, v in os.environ.items() if k not in (host_allocator.ENV, "JAX_PLATFORMS")}
  out = subprocess.run(
    [sys.executable, "-c", _CHILD],
    env={**environ, **env},
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_cpu_host_decides_from_jax_platforms_then_device_files():
  assert host_allocator.cpu_host({"JAX_PLATFORMS": "cpu"}, ["/dev/accel0"]) is None
  assert host_allocator.cpu_host({}, []) is None
  assert host_allocator.cpu_host({"JAX_PLATFORMS": "tpu,cpu"}, []) == "JAX_PLATFORMS=tpu,cpu"
  assert host_allocator.cpu_host({}, ["/dev/nvidia0"]) == "accelerator host (/dev/nvidia0)"
  assert host_allocator.cpu_host(
    {"PRETRAIN_HOST_ALLOCATOR": "default", "JAX_PLATFORMS": "cpu"}, []
  ) == ("PRETRAIN_HOST_ALLOCATOR=default")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_tuned_malloc_reuses_a_freed_64_mib_buffer_without_page_faults():
  default = _run_child(JAX_PLATFORMS="cpu", PRETRAIN_HOST_ALLOCATOR="default")
  tuned = _run_child(JAX_PLATFORMS="cpu")
  assert default["state"] == "default: PRETRAIN_HOST_ALLOCATOR=default"
  assert tuned["state"] == "tuned"
  # Untuned, every round maps the 16,384 pages of 64 MiB afresh (the fault this module removes).
  assert default["faults_per_round"] > 15_000
  assert tuned["faults_per_round"] < 500


def test_an_accelerator_platform_leaves_malloc_alone():
  assert _run_child(JAX_PLATFORMS="tpu")["state"] == "default: JAX_PLATFORMS=tpu"
