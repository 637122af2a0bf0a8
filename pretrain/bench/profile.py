"""Where a project step's time goes: its parts jitted alone, and the slowest XLA ops of forward+backward."""

import gzip
import json
import os
import re
import tempfile
import time

import jax

from pretrain import sharding
from pretrain.bench.timing import Case, run_cases
from pretrain.errors import PretrainError


def _objective(task, model, batch):
  """(params, batch, deterministic) -> the task's objective, with a fixed dropout key."""
  rng = jax.random.key(0)
  denominators = task.denominators(batch)
  return lambda p, b, deterministic: task.loss(
    model, p, b, denominators, dropout_rng=rng, deterministic=deterministic
  )[0]


def breakdown(case: Case, *, steps: int = 5, windows: int = 3) -> dict:
  """Milliseconds of the step's parts, each jitted alone: where a project step's time goes."""
  import optax  # pylint: disable=g-import-not-at-top

  task, model, tx, mesh, params, batch = case.context()
  objective = _objective(task, model, batch)

  def update(p, g, o):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  def part(label, fn, *args):
    def run(n):
      for _ in range(n):
        r = fn(*args)
      jax.block_until_ready(r)

    return Case(label, run, lambda t: t.step_seconds * 1e3, steps=steps, warmup=1)

  with sharding.mesh_context(mesh):
    grad = jax.jit(jax.grad(lambda p, b: objective(p, b, False)))
    cases = [
      part("forward, no dropout", jax.jit(lambda p, b: objective(p, b, True)), params, batch),
      part("forward", jax.jit(lambda p, b: objective(p, b, False)), params, batch),
      part("forward+backward", grad, params, batch),
      part("optimizer update", jax.jit(update), params, grad(params, batch), tx.init(params)),
    ]
    return dict(zip([c.label for c in cases], run_cases(cases, windows)))


_OP_NAME = re.compile(r'^\s*%?([\w.\-]+) = .*?op_name="([^"]*)"')


def op_profile(case: Case, *, top: int = 15, steps: int = 3) -> dict:
  """Where forward+backward's time goes op by op, from a jax.profiler trace.

  `top`: the XLA ops that take the most time, each with the compiled HLO instruction, ms per step
  (summed over its runs), its share of the step's wall time, and the jax op it came from (e.g.
  `transpose(jvp(...))/h_0/ln_2/add_any`), so a slow fusion can be traced to the model code.
  `kinds`: the same time summed by kind of instruction (its name without the number: `ynn_fusion`
  holds the matmuls XLA:CPU hands to its library, `copy_bitcast_fusion` layout copies, ...), with
  how many ran. On CPU, independent ops run concurrently: the shares can add up to more than 100%,
  and the profiler itself slows the step (`wall_ms`).
  """
  task, model, _, mesh, params, batch = case.context()
  objective = _objective(task, model, batch)
  with sharding.mesh_context(mesh):
    grad = jax.jit(jax.grad(lambda p, b: objective(p, b, False)))
    compiled = grad.lower(params, batch).compile()
    origin = {
      m.group(1): m.group(2)
      for line in compiled.as_text().splitlines()
      if (m := _OP_NAME.match(line))
    }
    jax.block_until_ready(compiled(params, batch))
    with tempfile.TemporaryDirectory(prefix="pretrain-profile-") as d:
      start = time.perf_counter()
      with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
          jax.block_until_ready(compiled(params, batch))
      wall = (time.perf_counter() - start) / steps
      traces = [
        os.path.join(r, f)
        for r, _, fs in os.walk(d)
        for f in fs
        if f.endswith("perfetto_trace.json.gz")
      ]
      if not traces:
        raise PretrainError("jax.profiler wrote no perfetto trace")
      with gzip.open(traces[0], "rt", encoding="utf-8") as f:
        events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  seconds: dict[str, float] = {}
  for e in events:
    if (
      e.get("ph") == "X" and e.get("name") in origin
    ):  # XLA ops only, not runtime or Python frames.
      seconds[e["name"]] = seconds.get(e["name"], 0.0) + float(e.get("dur", 0)) * 1e-6 / steps
  ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
  kinds: dict[str, list] = {}
  for name, sec in ranked:
    k = kinds.setdefault(re.sub(r"\.\d+$", "", name), [0.0, 0])
    k[0], k[1] = k[0] + sec, k[1] + 1
  return {
    "wall_ms": wall * 1e3,
    "op_ms": sum(seconds.values()) * 1e3,
    "top": [
      {"op": name, "ms": s * 1e3, "share": s / wall, "from": origin[name]}
      for name, s in ranked[:top]
    ],
    "kinds": [
      {"kind": k, "ms": sec * 1e3, "share": sec / wall, "ops": n}
      for k, (sec, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])
    ],
  }
