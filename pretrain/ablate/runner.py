"""Runs a sweep: every (variant, seed) job (and its probe) in DIR/<variant>/seed_<k>/, then the report."""

import dataclasses
import os

from etils import epath
import ml_collections

from pretrain import jobs
from pretrain import train as train_lib
from pretrain.ablate import budget as budget_lib
from pretrain.ablate import manifest
from pretrain.ablate import probe as probe_lib
from pretrain.ablate import report
from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError


def job_dir(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f"seed_{seed}")  # Also right for a URL.


def _plans(sweep, configs, settings, workdir, tokenizer_for) -> dict:
  """The budget's plan per variant: the manifest's where it has every variant, else computed."""
  recorded = (manifest.read(workdir) or {}).get("plans", {})
  if all(name in recorded for name in configs):
    return {name: budget_lib.Plan(**recorded[name]) for name in configs}
  return budget_lib.plans(sweep, configs, settings.baseline, tokenizer_for=tokenizer_for)


def _check_selection(configs, settings, only, seeds) -> None:
  unknown = sorted(set(only or []) - set(configs))
  if unknown:
    raise PretrainError(
      f"unknown variant(s) {', '.join(unknown)}; the sweep has {', '.join(configs)}"
    )
  bad = sorted(k for k in seeds or [] if not 0 <= k < settings.seeds)
  if bad:
    raise PretrainError(
      f"seed index {', '.join(map(str, bad))} is outside the sweep's seeds 0..{settings.seeds - 1}"
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A sweep checked against its directory: what every job of it trains."""

  configs: dict  # variant -> its config (before the budget and the seed)
  settings: sweep_lib.Settings
  plans: dict  # variant -> budget.Plan
  budget: dict  # As the sweep declares it.
  probe: ml_collections.ConfigDict | None  # The probe's fine-tuning config.
  manifest: dict  # What the directory's sweep.json holds after this run.

  def job_config(self, variant: str, seed: int) -> ml_collections.ConfigDict:
    """The training config of job (variant, seed index)."""
    seeded = sweep_lib.seeded(self.configs[variant], self.settings.seed_keys, seed)
    return budget_lib.job_config(seeded, self.plans[variant])


def prepare(
  sweep, workdir: str, *, write: bool = True, tokenizer_for=budget_lib.open_tokenizer
) -> Prepared:
  """Checks the sweep and its directory (PretrainError for a bad one, or a directory of another sweep)
  and records the sweep's manifest there if `write`."""
  configs = sweep_lib.variant_configs(sweep)
  settings = sweep_lib.settings(sweep, configs)
  declared = budget_lib.declared(sweep)
  probe_base = probe_lib.base(sweep)
  plans = _plans(sweep, configs, settings, workdir, tokenizer_for)
  recorded = manifest.build(
    sweep_lib.base_config(sweep),
    declared,
    settings,
    configs,
    plans,
    probe_base.to_dict() if probe_base is not None else None,
  )
  p = Prepared(configs, settings, plans, declared, probe_base, manifest.checked(workdir, recorded))
  if write:
    manifest.write(workdir, p.manifest)
  return p


def _run_or_read(p: Prepared, sweep, workdir, name, k, run: bool, probe_fn, log):
  """(result, probe result or None) of job (name, k): run (skipped when finished) or read."""
  folder = job_dir(workdir, name, k)
  if run:
    config = p.job_config(name, k)
    result = jobs.run_job(
      f"{name} seed {k}", train_lib.train, config, folder, steps=p.plans[name].steps, log=log
    )
  else:
    result = jobs.read_result(folder) or {"status": "not run"}
  if p.probe is None:
    return result, None
  probe_dir = probe_lib.workdir(workdir, name, k)
  if not (run and result.get("status") == "done"):
    return result, jobs.read_result(probe_dir) or {"status": "not run"}
  config = probe_lib.job_config(sweep, p.probe, folder, k)
  probed = jobs.run_job(
    f"{name} seed {k} probe", probe_fn, config, probe_dir, steps=probe_lib.steps(config), log=log
  )
  return result, probed


def run_sweep(
  sweep,
  workdir: str,
  *,
  only: list[str] | None = None,
  seeds: list[int] | None = None,
  report_only: bool = False,
  command: str = "",
  log=print,
  tokenizer_for=budget_lib.open_tokenizer,
) -> list[dict]:
  """Runs the sweep's jobs (all, or those of the `only` variants and `seeds` indices) and writes the
  report; returns one row per (variant, seed), sorted as the report."""
  configs = sweep_lib.variant_configs(sweep)  # A bad selection fails before any data is read.
  _check_selection(configs, sweep_lib.settings(sweep, configs), only, seeds)
  p = prepare(sweep, workdir, write=False, tokenizer_for=tokenizer_for)
  configs, settings = p.configs, p.settings
  # Before any job: a probe whose fine-tuning cannot be imported fails now, not after pretraining.
  probe_fn = probe_lib.job_function() if p.probe is not None and not report_only else None
  if not report_only:
    manifest.write(workdir, p.manifest)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  rows, job_curves = [], {}
  for name in configs:
    for k in range(settings.seeds):
      folder = job_dir(workdir, name, k)
      selected = not report_only and (not only or name in only) and (not seeds or k in seeds)
      result, probed = _run_or_read(p, sweep, workdir, name, k, selected, probe_fn, log)
      rows.append(report.job_row(name, k, p.plans[name], folder, result, probed))
      job_curves.setdefault(name, {})[k] = report.curves(folder)
  first = next(iter(configs.values()))
  return report.write_report(
    sweep,
    settings,
    rows,
    job_curves,
    p.plans,
    p.budget,
    {key: sweep_lib.get(first, key) for key in settings.seed_keys},
    workdir,
    command or f"python -m pretrain.ablate --workdir={workdir}",
  )
