"""--search: remat policy x data/fsdp/tensor split, each at the fewest microbatches that fit, fastest first.

For every mesh split and remat policy the search compiles the step with 1 microbatch
(train.grad_accum_steps), then 2, 4, ... until it fits: more microbatches only add steps of a
smaller batch (and, under FSDP, the parameters' all-gathers once per microbatch), so the fewest that
fit is that pair's best. At most `limit` compiles in all, `workers` at a time in separate processes
(each compile holds the whole program in memory: a paper config takes a few GB).
"""

import concurrent.futures
import multiprocessing
import os

from pretrain.errors import PretrainError
from pretrain.plan import compile as compile_lib
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


def _plan_one(config, target_name: str, hbm_limit_bytes) -> dict:
  """One candidate's plan, or {"error": ...} for a candidate the config cannot take (a batch split)."""
  try:
    return compile_lib.plan(config, targets_lib.parse(target_name), hbm_limit_bytes=hbm_limit_bytes)
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
) -> list[dict]:
  """Every compiled candidate's plan (each with its `fits`), fitting ones fastest first, then the rest."""
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
  pool = None
  if workers > 1:
    pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")
    )
  try:
    while wave and len(results) < limit:
      wave = wave[: limit - len(results)]
      args = [(_with(config, m, r, a), target.name, hbm_limit_bytes) for m, r, a in wave]
      if pool:
        done = list(pool.map(_plan_one, *zip(*args)))
      else:
        done = [_plan_one(*a) for a in args]
      nxt = []
      for (m, r, a), p in zip(wave, done):
        if "error" in p:
          continue
        results.append(p)
        if not p["fits"] and (more := next_accum(m, a)):
          nxt.append((m, r, more))
      wave = nxt
  finally:
    if pool:
      pool.shutdown()
  fitting = sorted((p for p in results if p["fits"]), key=lambda p: p["roofline"]["step_seconds"])
  return fitting + [p for p in results if not p["fits"]]
