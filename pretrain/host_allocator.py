"""glibc malloc kept from handing large buffers back to the kernel, on hosts where XLA runs on the CPU.

XLA:CPU allocates every buffer of a compiled step (activations, logits, gradients) with malloc, and
frees it when the step is done. glibc serves each allocation above 32 MiB, and any large one made on
a worker thread's arena, with a fresh mmap, and unmaps it on free; the next step then page-faults
every 4 KiB page of it again. A gpt2_tiny bf16 step faulted ~98,000 pages (385 MiB) per step,
about a third of its time (BENCHMARKS.md, "Page faults"). Here all threads share the main heap
(M_ARENA_MAX=1), never mmap (M_MMAP_MAX=0; glibc still falls back to mmap if the heap cannot grow)
and never give the heap's top back (M_TRIM_THRESHOLD=-1): the step's buffers come from memory that
is already mapped. The cost is host memory: the heap settles, within the first ~10 steps, at about
twice the default's resident size (BERT-base bf16 at 8 x 128: 9.2 GB against 4.7 GB), and it keeps
its peak until the process exits.

It must run before jax creates its CPU client (the client's threads pick their arena on first
use), so it runs when `pretrain` is imported. Only on hosts that run XLA on the CPU: where
JAX_PLATFORMS names only cpu, or, with JAX_PLATFORMS unset, where no TPU or NVIDIA device file is
present. `PRETRAIN_HOST_ALLOCATOR=default` leaves malloc as it is.
"""

import ctypes
import glob
import os

ENV = "PRETRAIN_HOST_ALLOCATOR"
_ACCELERATOR_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")
# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim.

state = "not applied"  # What apply() did, for the benchmark's header: 'tuned' or why not.


def cpu_host(environ, device_files) -> str | None:
  """None where XLA runs on this host's CPU, else why not (an accelerator, or the user said so)."""
  if environ.get(ENV, "") == "default":
    return f"{ENV}=default"
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return None if set(platforms) == {"cpu"} else f"JAX_PLATFORMS={environ['JAX_PLATFORMS']}"
  if device_files:
    return f"accelerator host ({device_files[0]})"
  return None


def apply() -> str:
  """Tunes glibc malloc for XLA:CPU where `cpu_host` says so; returns (and records) what it did."""
  global state
  files = [f for pattern in _ACCELERATOR_FILES for f in glob.glob(pattern)]
  reason = cpu_host(os.environ, files)
  if reason is None:
    try:
      libc = ctypes.CDLL(None)
      libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
    except (OSError, AttributeError):
      reason = "not glibc"
  if reason is None:
    ok = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    state = "tuned" if ok else "mallopt refused"
  else:
    state = f"default: {reason}"
  return state
