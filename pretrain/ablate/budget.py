"""The sweep's budget, in tokens or in model FLOPs, turned into each variant's steps and warmup.

  budget absent          every variant trains the base config's train.steps (the same tokens)
  budget.tokens = N      every variant trains N // tokens per step steps
  budget.flops = F       each variant trains F // (its model FLOPs per step) steps: a variant that is
                         cheaper per token (MQA, GQA, a sliding window) trains on more tokens

Model FLOPs are the family's `train_flops_per_example(skip_masked_attention=True)`:
matmul FLOPs of forward + backward with attention counted over the query-key
pairs the variant's mask keeps (causal about half, a sliding window a band),
as a block-skipping kernel computes it.

The learning-rate schedule follows each variant's length: the decay ends at
the variant's own last step (the optimizer reads train.steps), and the warmup
is the same fraction of the run as the baseline's: warmup_steps x steps /
baseline steps, rounded (halves up), so the baseline keeps its configured
warmup.
"""

import dataclasses
import inspect
import json
import math
from typing import Callable

import ml_collections

from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError


@dataclasses.dataclass(frozen=True)
class Plan:
  """One variant's length under the budget."""

  steps: int
  warmup_steps: int
  tokens_per_step: int
  flops_per_step: float  # Model FLOPs, attention as the variant computes it.

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  @property
  def flops(self) -> float:
    return self.steps * self.flops_per_step


def declared(sweep) -> dict:
  """The budget as the sweep states it: {'kind': 'tokens' | 'flops', 'value': N or None}; checked."""
  budget = sweep_lib.flatten(sweep.get("budget"))
  unknown = sorted(set(budget) - {"tokens", "flops"})
  if unknown:
    raise PretrainError(
      f"unknown budget key(s) {', '.join(unknown)}; use budget.tokens or budget.flops"
    )
  if "tokens" in budget and "flops" in budget:
    raise PretrainError(
      "budget.tokens and budget.flops are both set; a sweep matches one budget, give one of them"
    )
  if not budget:
    return {"kind": "tokens", "value": None}
  ((kind, value),) = budget.items()
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise PretrainError(f"budget.{kind}={value!r} must be a positive number")
  if "train.steps" in sweep_lib.flatten(sweep.get("base_overrides")):
    raise PretrainError(
      f"base_overrides sets train.steps and budget.{kind} is given; the budget sets every variant's "
      "steps, give one of them"
    )
  return {"kind": kind, "value": value}


def _skip_masked_flops(task, name: str) -> float:
  fn = task.train_flops_per_example
  if "skip_masked_attention" not in inspect.signature(fn).parameters:
    raise PretrainError(
      f"variant {name}: family {task.name!r} does not count attention per mask "
      "(train_flops_per_example(skip_masked_attention=...)); use a token budget"
    )
  return float(fn(skip_masked_attention=True))


def open_tokenizer(config: ml_collections.ConfigDict):
  """The tokenizer a run's data uses (its data prepared into the cache on first use, as the run would)."""
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top

  tokenizer, _ = sources.open_stores(config.data, config.tokenizer)
  return tokenizer


def plans(
  sweep,
  configs: dict[str, ml_collections.ConfigDict],
  baseline: str,
  *,
  tokenizer_for: Callable = open_tokenizer,
) -> dict[str, Plan]:
  """Each variant's steps, warmup, tokens and model FLOPs per step; PretrainError for a budget below a step."""
  from pretrain import families  # pylint: disable=g-import-not-at-top

  budget = declared(sweep)
  tokenizers, tasks = {}, {}
  for name, config in configs.items():
    key = json.dumps(
      [config.data.to_dict(), config.tokenizer.to_dict()], sort_keys=True, default=str
    )
    if key not in tokenizers:  # Variants share the data; a tokenizer ablation has its own.
      tokenizers[key] = tokenizer_for(config)
    tasks[name] = families.get_task(config, tokenizers[key])
  per_step = {}
  for name, config in configs.items():
    batch = int(config.train.batch_size)
    per_step[name] = (
      batch * int(tasks[name].tokens_per_example),
      batch * _skip_masked_flops(tasks[name], name),
    )
  steps = {}
  for name, config in configs.items():
    tokens_per_step, flops_per_step = per_step[name]
    if budget["kind"] == "flops":
      steps[name] = int(budget["value"] // flops_per_step)
      unit = f"{flops_per_step:,.0f} model FLOPs"
    elif budget["value"] is not None:
      steps[name] = int(budget["value"] // tokens_per_step)
      unit = f"{tokens_per_step:,} tokens"
    else:
      steps[name] = int(config.train.steps)
      unit = ""
    if steps[name] < 1:
      raise PretrainError(
        f"budget.{budget['kind']}={budget['value']:,} is below one step of variant {name} "
        f"({unit} per step)"
      )
  out = {}
  for name, config in configs.items():
    warmup = int(config.optimizer.warmup_steps)
    scaled = math.floor(warmup * steps[name] / steps[baseline] + 0.5)  # Halves round up.
    out[name] = Plan(
      steps=steps[name],
      warmup_steps=max(scaled, 1) if warmup else 0,
      tokens_per_step=per_step[name][0],
      flops_per_step=per_step[name][1],
    )
  return out


def job_config(config: ml_collections.ConfigDict, plan: Plan) -> ml_collections.ConfigDict:
  """A variant's config with its budget's steps and warmup."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.steps = plan.steps
  out.optimizer.warmup_steps = plan.warmup_steps
  return out


def describe(kind: str, value, plan_by_variant: dict[str, Plan]) -> str:
  """One sentence for the report: which budget, and what it gave each variant."""
  first = next(iter(plan_by_variant.values()))
  if kind == "flops":
    return (
      f"a model-FLOP budget of {value:,.4g} FLOPs per job: each variant trains as many steps as "
      "fit (attention counted over the query-key pairs its mask keeps; see the cost table)"
    )
  what = f"{first.steps:,} steps x {first.tokens_per_step:,} tokens = {first.tokens:,} tokens"
  source = f"budget.tokens={value:,}" if value is not None else "train.steps"
  return f"a token budget ({source}): the same {what} for every variant"
