"""The downstream probe: each pretrained (variant, seed) fine-tuned on one task, as one more job.

A sweep's `probe` section:
  config      a fine-tuning config file (e.g. configs/finetune/embedded.py), whose `init_from` the
              runner sets to the pretraining job's workdir
  overrides   nested overrides of it (e.g. a shorter fine-tuning run)
  seed_keys   keys of the fine-tuning config set to their value + the seed index
              (default: train.seed where the config has it)

The job is `pretrain.finetune.finetune(config, workdir)`, run through
pretrain.jobs like the pretraining jobs (skipped when finished, resumed when
interrupted); its returned row's `eval_score` is the probe's result, compared
across variants with the same statistics as the eval loss.
"""

import importlib
import os

import ml_collections

from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError

JOB = "pretrain.finetune:finetune"  # module:function, imported on first use.
SCORE = "eval_score"


def job_function():
  """The fine-tuning job function named by JOB."""
  module, name = JOB.split(":")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise PretrainError(f"the probe needs {JOB} to fine-tune with ({e})") from e


def workdir(sweep_dir: str, variant: str, seed: int) -> str:
  return os.path.join(sweep_dir, variant, f"probe_seed_{seed}")  # Also right for a URL.


def base(sweep) -> ml_collections.ConfigDict | None:
  """The probe's fine-tuning config with its overrides, checked; None when the sweep has no probe."""
  probe = sweep.get("probe")
  if not probe:
    return None
  unknown = sorted(set(probe.keys()) - {"config", "overrides", "seed_keys"})
  if unknown or not probe.get("config"):
    raise PretrainError(
      "probe: give config (a fine-tuning config file), optionally overrides and seed_keys"
      + (f"; unknown key(s) {', '.join(unknown)}" if unknown else "")
    )
  config = sweep_lib.load_config_file(probe.config)
  sweep_lib.apply(config, probe.get("overrides"), "probe.overrides")
  if "init_from" not in config:
    raise PretrainError(
      f"probe config {probe.config}: no init_from key to start from the pretraining"
    )
  for key in seed_keys(sweep, config):
    if not isinstance(sweep_lib.get(config, key), int):
      raise PretrainError(f"probe.seed_keys: {key!r} is not an integer key of {probe.config}")
  return config


def seed_keys(sweep, config) -> tuple[str, ...]:
  keys = sweep.probe.get("seed_keys")
  if keys is None:
    return ("train.seed",) if isinstance(sweep_lib.get(config, "train.seed"), int) else ()
  return tuple(keys)


def job_config(sweep, config, pretrained_dir: str, seed: int) -> ml_collections.ConfigDict:
  """The fine-tuning config of one (variant, seed): from its pretraining workdir, seeded by its seed."""
  out = sweep_lib.seeded(config, seed_keys(sweep, config), seed)
  out.init_from = pretrained_dir
  return out


def steps(config) -> int:
  """The steps the fine-tuning job must reach to count as finished: its train.steps where set, else what
  the job's module resolves from its epochs (`job_steps(config)` beside the job function)."""
  value = sweep_lib.get(config, "train.steps")
  if isinstance(value, int) and value > 0:
    return value
  module = importlib.import_module(JOB.split(":")[0])
  return int(module.job_steps(config))
