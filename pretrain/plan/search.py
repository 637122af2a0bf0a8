"""--search: remat policy x data/fsdp/tensor split, each at the fewest microbatches that fit, fastest first.

For every mesh split and remat policy the search compiles the step with 1 microbatch
(train.grad_accum_steps), then 2, 4, ... until it fits: more microbatches only add steps of a
smaller batch (and, under FSDP, the parameters' all-gathers once per microbatch), so the fewest that
fit is that pair's best. At most `limit` candidates in all (a run in phases: a compile per phase
of each), `workers` at a time, each in a child process of its own (pretrain.plan.isolate;
each holds the whole program in memory: a paper config takes a few GB). A candidate whose compile
crashes (libtpu's SIGSEGV) is reported as not fitting with its `crash` and not tried with more
microbatches (the crash is not about memory); the search goes on with the others.
"""

import concurrent.futures
import os
from typing import Callable

from pretrain.errors import PretrainError
from pretrain.plan import compile as compile_lib
from pretrain.plan import isolate
from pretrain.plan import phased
from pretrain.plan import targets as targets_lib

REMAT_POLICIES = ("none", "dots_with_no_batch_dims_saveable", "full")
MAX_GRAD_ACCUM = 16
GIB = 2**30


def mesh_splits(num_devices: int) -> list[dict]:
  """data-only, fsdp-only, and each of those with tensor = 2, 4, 8 (when they divide the devices)."""
  out = []
  for tensor in (1, 2, 4, 8):
    if num_devices % tensor:
      continue
    rest = num_devices // tensor
    for split in ({"data": rest, "fsdp": 1}, {"data": 1, "fsdp": rest}):
      mesh = dict(split, tensor=tensor)
      if mesh not in out:
        out.append(mesh)
  return out


def _with(config, mesh: dict, remat: str, grad_accum: int):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.mesh.update(mesh)
    c.model.remat_policy = remat
    c.train.grad_accum_steps = grad_accum
  return c


def _plan_one(config, target_name: str, hbm_limit_bytes, plan_one: phased.PlanOne) -> dict:
  """One candidate's plan, or {"error": ...} for a candidate the config cannot take (a batch split)."""
  try:
    return phased.plan(config, target_name, hbm_limit_bytes, plan_one=plan_one)
  except PretrainError as e:
    return {"error": str(e)}


def default_workers() -> int:
  """Compiles at once: one per two cores, and no more than the free memory holds at ~6 GiB each."""
  available = None
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except OSError:
    pass
  by_memory = available // (6 * GIB) if available else 1
  return max(1, min((os.cpu_count() or 1) // 2, by_memory))


def search(
  config,
  target: targets_lib.Target,
  *,
  limit: int = 12,
  workers: int = 1,
  hbm_limit_bytes: float | None = None,
  meshes: list[dict] | None = None,
  remat_policies: tuple[str, ...] = REMAT_POLICIES,
  plan_one: phased.PlanOne = isolate.plan,
  on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
  """Every compiled candidate's plan (each with its `fits`), fitting ones fastest first, then the rest.

  `plan_one(config, target_name, hbm_limit_bytes)` plans one compile (a child process's);
  `on_result` is given each candidate's plan as it comes (a search of paper configs takes a while).
  """
  if limit < 1:
    raise PretrainError(f"--search_limit={limit} must be at least 1")
  missing = compile_lib.aot_missing(target.platform)
  if missing:
    raise PretrainError(missing)
  batch = int(config.train.batch_size)
  pairs = [(m, r) for m in (meshes or mesh_splits(target.num_devices)) for r in remat_policies]

  # A pair's next number of microbatches: the first dividing the batch into shards of whole sequences.
  def next_accum(mesh, after: int):
    shards = mesh["data"] * mesh["fsdp"]
    a = after * 2 if after else 1
    while a <= MAX_GRAD_ACCUM and (batch % a or (batch // a) % shards):
      a *= 2
    return a if a <= MAX_GRAD_ACCUM else None

  wave = [(m, r, a) for m, r in pairs if (a := next_accum(m, 0))]
  results: list[dict] = []
  # Threads that each wait on a child process: the compiles run side by side in the children.
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    while wave and len(results) < limit:
      wave = wave[: limit - len(results)]
      done = pool.map(
        lambda candidate: _plan_one(
          _with(config, *candidate), target.name, hbm_limit_bytes, plan_one
        ),
        wave,
      )
      nxt = []
      for (m, r, a), p in zip(wave, done):
        if "error" in p:
          continue
        results.append(p)
        if on_result:
          on_result(p)
        if not p["fits"] and "crash" not in p and (more := next_accum(m, a)):
          nxt.append((m, r, more))
      wave = nxt
  fitting = sorted((p for p in results if p["fits"]), key=lambda p: p["roofline"]["step_seconds"])
  return fitting + [p for p in results if not p["fits"]]
