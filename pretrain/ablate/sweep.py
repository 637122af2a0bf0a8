"""A sweep config read and checked: its variants' training configs, seeds, baseline and test settings."""

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections

from pretrain.errors import PretrainError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A fair comparison: the same examples in the same order for the same number of steps. The runner
# itself sets train.steps (from the budget) and the seeds (from the seed index) of each job.
FIXED_KEYS = (
  "train.steps",
  "train.batch_size",
  "train.grad_accum_steps",
  "train.seed",
  "data.seed",
  "data.max_seq_length",
  "data.inputs_length",
  "data.targets_length",
  "data.packing",
  "data.source",
  "data.paths",
  "data.mixture",
)
SEED_KEYS = ("train.seed", "data.seed")  # Init and dropout; data order.
TESTS = ("t", "wilcoxon")
CORRECTIONS = ("none", "holm")
SWEEP_KEYS = (
  "base",
  "base_overrides",
  "variants",
  "seeds",
  "seed_keys",
  "baseline",
  "alpha",
  "test",
  "correction",
  "budget",
  "probe",
)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (a path relative to the repository root also works)."""
  full = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise PretrainError(f"config file {path!r} not found")
  spec = importlib.util.spec_from_file_location("_ablation_base", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def flatten(overrides, prefix="") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in overrides.items() if overrides else []:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def get(config, dotted: str):
  """The value at a dotted key, or None where a family has no such key (T5 has no data.max_seq_length)."""
  for part in dotted.split("."):
    if part not in config:
      return None
    config = config[part]
  return config


def apply(config: ml_collections.ConfigDict, overrides, what: str) -> None:
  """Sets nested `overrides` in `config`; PretrainError naming `what` for a key the config lacks."""
  for key, value in flatten(overrides).items():
    node = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise PretrainError(f"{what}: cannot set {key}={value!r} (no such config key: {part!r})")
      node = node[part]
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise PretrainError(f"{what}: cannot set {key}={value!r} ({e})") from e


def base_config(sweep) -> ml_collections.ConfigDict:
  """The base config file with the sweep's base_overrides."""
  base = load_config_file(sweep.base)
  apply(base, sweep.get("base_overrides"), "base_overrides")
  return base


def variant_configs(sweep) -> dict[str, ml_collections.ConfigDict]:
  """Each variant's full training config, checked to share the base's data, seed and budget."""
  if not sweep.get("variants"):
    raise PretrainError("the sweep has no variants")
  base = base_config(sweep)
  out = {}
  for name, overrides in sweep.variants.items():
    if not name.replace("_", "").replace("-", "").isalnum():
      raise PretrainError(
        f"variant name {name!r}: use letters, digits, '-' and '_' (it names a folder)"
      )
    config = ml_collections.ConfigDict(base.to_dict())
    apply(config, overrides, f"variant {name}")
    for key in FIXED_KEYS:
      if get(config, key) != get(base, key):
        raise PretrainError(
          f"variant {name} changes {key}; every variant must train on the same data "
          "for the same budget (set it in base_overrides instead)"
        )
    out[name] = config
  return out


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the sweep repeats and compares its variants."""

  seeds: int  # Jobs per variant, seed index 0 .. seeds - 1.
  seed_keys: tuple[str, ...]  # Config keys set to their base value + the seed index.
  baseline: str
  alpha: float
  test: str  # 't' (paired t-test) or 'wilcoxon' (signed-rank), over seeds.
  correction: str  # 'none' or 'holm' (Holm-Bonferroni over the comparisons with the baseline).


def settings(sweep, configs: dict[str, ml_collections.ConfigDict]) -> Settings:
  """The sweep's seeds, seed keys, baseline and test, checked; PretrainError for a bad one."""
  unknown = sorted(set(sweep.keys()) - set(SWEEP_KEYS))
  if unknown:
    raise PretrainError(
      f"unknown sweep key(s) {', '.join(unknown)}; valid: {', '.join(SWEEP_KEYS)}"
    )
  seeds = sweep.get("seeds", 3)
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise PretrainError(f"seeds={seeds!r} must be an integer >= 1")
  seed_keys = tuple(sweep.get("seed_keys", SEED_KEYS))
  first = next(iter(configs.values()))
  for key in seed_keys:
    if not isinstance(get(first, key), int) or isinstance(get(first, key), bool):
      raise PretrainError(f"seed_keys: {key!r} is not an integer key of the base config")
  baseline = sweep.get("baseline") or next(iter(configs))
  if baseline not in configs:
    raise PretrainError(
      f"baseline {baseline!r} is not a variant; the sweep has {', '.join(configs)}"
    )
  alpha = sweep.get("alpha", 0.05)
  if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
    raise PretrainError(f"alpha={alpha!r} must be a number in (0, 1)")
  test = sweep.get("test", "t")
  if test not in TESTS:
    raise PretrainError(f"test={test!r}: expected one of {', '.join(TESTS)}")
  correction = sweep.get("correction", "none")
  if correction not in CORRECTIONS:
    raise PretrainError(f"correction={correction!r}: expected one of {', '.join(CORRECTIONS)}")
  return Settings(seeds, seed_keys, baseline, float(alpha), test, correction)


def seeded(config: ml_collections.ConfigDict, keys: tuple[str, ...], index: int):
  """A copy of `config` whose `keys` are their value + index: seed index 0 is the config itself."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.update_from_flattened_dict({k: int(get(config, k)) + index for k in keys})
  return out
