"""Ablations: one base config, named overrides, several seeds, one matched budget; a report that tests.

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=DIR
  python -m pretrain.ablate --config=... --workdir=DIR --variant=gqa --seed=1   # one job (a pod machine)
  python -m pretrain.ablate --config=... --workdir=DIR --report_only          # gather finished jobs

A sweep config's `get_config()` returns:
  base            a config file (relative paths from the repository root)
  base_overrides  nested overrides applied to every variant (e.g. a CPU budget)
  variants        name -> nested overrides ({} is the base itself)
  seeds           jobs per variant (default 3); seed index k sets each of seed_keys to its base
                  value + k, so seed k has the same data order, init and dropout in every variant
  seed_keys       which keys follow the seed (default train.seed: init and dropout, data.seed:
                  data order); e.g. ['train.seed'] keeps one data order for all seeds
  baseline        the variant the others are compared with (default: the first)
  alpha           significance level of the verdicts (default 0.05)
  test            't' (paired t-test, default) or 'wilcoxon' (signed-rank), over seeds
  correction      'none' (default) or 'holm' (Holm-Bonferroni over the comparisons)
  budget          absent: train.steps for all (a token budget); tokens=N; or flops=F (model
                  FLOPs per job: a variant cheaper per token trains more steps; budget.py)
  probe           optional downstream probe: config (a fine-tuning config file), overrides,
                  seed_keys; each finished job is fine-tuned from its workdir (probe.py)

Every job trains in its own process (so peak memory and compile time are its
own) into DIR/<variant>/seed_<k>/ with the unchanged `pretrain.train` loop;
steps x batch x sequence (budget.py), data and seeds may not be overridden per
variant. A finished job is skipped; an interrupted one resumes from its
checkpoint. DIR/sweep.json records the sweep at its first run, and a sweep of
another base config, budget or seeds is refused there (manifest.py). DIR then
holds report.md, results.csv and loss_curves.png (report.py, stats.py). DIR may
be a gs:// URL (read and written through etils.epath).
"""

from pretrain.ablate.runner import job_dir, run_sweep
from pretrain.ablate.sweep import FIXED_KEYS, REPO, load_config_file, variant_configs
from pretrain.jobs import RESULT

__all__ = [
  "FIXED_KEYS",
  "REPO",
  "RESULT",
  "job_dir",
  "load_config_file",
  "run_sweep",
  "variant_configs",
]
