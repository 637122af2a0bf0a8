"""A run in phases (train.phases: BERT's 128 then 512 tokens) planned phase by phase.

Each phase is its own step (its sequence length, batch and microbatches), so `plan` compiles every
phase's config (pretrain.training.phases.phase_config) and returns one plan per phase under
`phases`; the run fits only if every phase does. Its summary fields are what a search ranks and a
preflight checks: `fits`, the largest peak, `refusal` / `crash` naming the phase, and a roofline
averaged over the steps each phase runs (step time, tokens/s and MFU of the whole run). A config
without phases is planned as it is.
"""

from typing import Callable

from pretrain.plan import isolate
from pretrain.training import phases as phases_lib

PlanOne = Callable[..., dict]  # (config, target_name, hbm_limit_bytes) -> plan, as isolate.plan.

_SHARED = ("target", "chip", "devices", "slices", "hosts", "mesh", "task", "num_params", "settings")


def plan(
  config,
  target_name: str,
  hbm_limit_bytes: float | None = None,
  *,
  plan_one: PlanOne = isolate.plan,
) -> dict:
  """The config's plan (`plan_one`'s), or for a run in phases every phase's and their summary."""
  if not phases_lib.has_phases(config):
    return plan_one(config, target_name, hbm_limit_bytes)
  config = config.copy_and_resolve_references()
  plans = []
  for phase in phases_lib.phases_of(config):
    p = plan_one(phases_lib.phase_config(config, phase), target_name, hbm_limit_bytes)
    span = {"name": phase.name, "start_step": phase.start_step, "end_step": phase.end_step}
    plans.append(dict(p, phase=span))
  return summary(plans)


def summary(plans: list[dict]) -> dict:
  """The run's plan from its phases' plans (in step order); see the module's docstring."""
  out = {k: plans[0][k] for k in _SHARED if k in plans[0]}
  out.update(
    phases=plans,
    fits=all(p["fits"] for p in plans),
    compile_seconds=sum(p.get("compile_seconds", 0.0) for p in plans),
  )
  peaks = [p["memory"].get("peak") for p in plans]
  if all(peaks):
    out["memory"] = {"peak": max(peaks), "limit": plans[0]["memory"]["limit"]}
  refused = [p for p in plans if not p["fits"] and "crash" not in p]
  crashed = [p for p in plans if "crash" in p]
  if refused:
    out["refusal"] = "; ".join(f"phase {p['phase']['name']}: {p['refusal']}" for p in refused)
  if crashed:
    out["crash"] = "; ".join(f"phase {p['phase']['name']}: {p['crash']}" for p in crashed)
  if out["fits"]:
    steps = [p["phase"]["end_step"] - p["phase"]["start_step"] for p in plans]
    seconds = sum(n * p["roofline"]["step_seconds"] for n, p in zip(steps, plans))
    tokens = sum(n * p["tokens_per_step"] for n, p in zip(steps, plans))
    mfu_time = sum(
      n * p["roofline"]["step_seconds"] * p["roofline"]["mfu"] for n, p in zip(steps, plans)
    )
    out["roofline"] = {
      "step_seconds": seconds / sum(steps),
      "tokens_per_sec": tokens / seconds,
      "mfu": mfu_time / seconds,
      "run_seconds": seconds,
      "averaged": "over the steps of each phase",
    }
  return out
