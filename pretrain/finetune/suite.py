"""The GLUE suite: every task over the papers' grid, one process per job, and the papers' table.

  python -m pretrain.finetune suite --suite=glue --init_from=RUN --data_dir=glue_data \\
    --workdir=runs/glue [--seeds=0,1,2] [--learning_rates=2e-5,3e-5,5e-5] [--tasks=rte,mrpc]

Each (task, learning rate, seed) is one job (pretrain.jobs.run_job) in
DIR/<task>/lr_<lr>/seed_<seed>: the task's config (pretrain/finetune/config.py:
batch 32, 3 epochs, warmup 10%, its own grid finetune.learning_rates unless
--learning_rates) with that learning rate and train.seed. A finished job is
skipped and an interrupted one resumes, so rerunning the command continues the
suite. The table follows BERT's and RoBERTa's dev-set reporting: for each task
and learning rate the median over seeds of each metric, the learning rate with
the best median GLUE score, and the GLUE average of those task scores
(x100). DIR gets results.md and results.csv. A task folder missing under
--data_dir is an error before any job runs, unless --skip_missing.
"""

import csv
import os
import sys

import numpy as np

from pretrain import jobs
from pretrain.errors import PretrainError
from pretrain.finetune import config as config_lib
from pretrain.finetune import run as run_lib
from pretrain.finetune.tasks import glue

SUITES = {"glue": tuple(glue.TASKS)}
# How BERT's table names the columns.
_TITLES = {
  "cola": "CoLA",
  "sst2": "SST-2",
  "mrpc": "MRPC",
  "stsb": "STS-B",
  "qqp": "QQP",
  "mnli": "MNLI-m/mm",
  "qnli": "QNLI",
  "rte": "RTE",
  "wnli": "WNLI",
}


def _floats(values, what: str) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise PretrainError(f"--{what}={','.join(values)} must be numbers") from None


def job_config(task: str, init_from: str, data_dir: str, lr: float, seed: int, overrides=()):
  c = config_lib.finetune_config(task)
  c.init_from = init_from
  c.finetune.data_dir = data_dir
  c.optimizer.learning_rate = float(lr)
  c.train.seed = int(seed)
  c.metrics.progress_bar = False
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise PretrainError(f"--overrides entry {item!r} must be KEY=VALUE")
    section, _, field = key.rpartition(".")
    target = c
    for part in section.split(".") if section else ():
      target = target[part]
    if field not in target:
      raise PretrainError(f"--overrides: {key} is not a config field")
    old = target[field]
    target[field] = type(old)(value) if not isinstance(old, bool) else value.lower() == "true"
  return c


def run_suite(
  init_from: str,
  data_dir: str,
  workdir: str,
  *,
  suite: str = "glue",
  tasks=None,
  seeds=(0, 1, 2),
  learning_rates=None,
  skip_missing: bool = False,
  overrides=(),
  log=print,
) -> list[dict]:
  """Runs (or continues) the suite; writes DIR/results.md and DIR/results.csv; returns the table rows."""
  if suite not in SUITES:
    raise PretrainError(f"--suite={suite!r}: expected one of {', '.join(SUITES)}")
  names = list(tasks or SUITES[suite])
  unknown = [t for t in names if t not in SUITES[suite]]
  if unknown:
    raise PretrainError(
      f"--tasks: {unknown[0]!r} is not a {suite} task ({', '.join(SUITES[suite])})"
    )
  if not data_dir:
    raise PretrainError("--data_dir is required: the folder holding the GLUE task folders")
  missing = [t for t in names if not os.path.isdir(os.path.join(data_dir, glue.TASKS[t].folder))]
  if missing and not skip_missing:
    raise PretrainError(
      f"{data_dir} has no {', '.join(glue.TASKS[t].folder for t in missing)} folder; "
      "--skip_missing runs the other tasks"
    )
  for t in missing:
    log(f"{t}: {os.path.join(data_dir, glue.TASKS[t].folder)} is missing; skipped")
  names = [t for t in names if t not in missing]
  results: dict = {}
  failed = []
  for task in names:
    grid = learning_rates or _floats(
      config_lib.finetune_config(task).finetune.learning_rates.split(","), "learning_rates"
    )
    steps = None
    for lr in grid:
      for seed in seeds:
        config = job_config(task, init_from, data_dir, lr, seed, overrides)
        if steps is None:  # Every job of the task trains as many steps.
          steps = run_lib.job_steps(config)
        name = f"{task}/lr_{lr:g}/seed_{seed}"
        result = jobs.run_job(
          name, run_lib.finetune, config, os.path.join(workdir, name), steps=steps, log=log
        )
        if result.get("status") == "done":
          results.setdefault(task, {}).setdefault(lr, []).append(result["last"])
        else:
          failed.append(f"{name}: {result.get('status')}: {result.get('error')}")
  rows = table_rows(results)
  write_tables(rows, results, workdir)
  for line in failed:
    log(f"not finished: {line}")
  return rows


def table_rows(results: dict) -> list[dict]:
  """Per task: each learning rate's medians over seeds, and the best learning rate's."""
  rows = []
  for task, by_lr in results.items():
    medians = {
      lr: {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k.startswith("eval_")}
      for lr, runs in by_lr.items()
    }
    best = max(medians, key=lambda lr: medians[lr]["eval_score"])
    rows.append(
      {
        "task": task,
        "best_lr": best,
        "seeds": len(by_lr[best]),
        "medians": medians,
        "score": 100 * medians[best]["eval_score"],
        "metrics": {k[5:]: 100 * v for k, v in medians[best].items() if k != "eval_score"},
      }
    )
  return rows


def _cell(task: str, metrics: dict) -> str:
  order = glue.TASKS[task].metrics
  if task == "mnli":
    return f"{metrics['accuracy']:.1f}/{metrics['mismatched_accuracy']:.1f}"
  return "/".join(f"{metrics[m]:.1f}" for m in order)


def write_tables(rows: list[dict], results: dict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  average = float(np.mean([r["score"] for r in rows])) if rows else float("nan")
  by_task = {r["task"]: r for r in rows}
  tasks = [t for t in glue.TASKS if t in by_task]
  lines = [
    "| " + " | ".join(["model", *(_TITLES[t] for t in tasks), "Average"]) + " |",
    "|" + "---|" * (len(tasks) + 2),
    "| "
    + " | ".join(["dev", *(_cell(t, by_task[t]["metrics"]) for t in tasks), f"{average:.1f}"])
    + " |",
    "",
    "Medians over seeds at each task's best learning rate (x100); MRPC and QQP F1/accuracy, STS-B "
    "Pearson/Spearman, CoLA Matthews correlation, the others accuracy. The average is GLUE's: each "
    "task's score (the mean of its metrics) averaged over the tasks.",
    "",
    "| task | best lr | seeds | score | score per lr |",
    "|---|---|---|---|---|",
  ]
  for t in tasks:
    r = by_task[t]
    per_lr = ", ".join(
      f"{lr:g}: {100 * m['eval_score']:.1f}" for lr, m in sorted(r["medians"].items())
    )
    lines.append(f"| {t} | {r['best_lr']:g} | {r['seeds']} | {r['score']:.1f} | {per_lr} |")
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "results.csv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["task", "learning_rate", "seeds", "best", "metric", "median"])
    for t in tasks:
      r = by_task[t]
      for lr, medians in sorted(r["medians"].items()):
        for k, v in medians.items():
          writer.writerow([t, f"{lr:g}", len(results[t][lr]), int(lr == r["best_lr"]), k[5:], v])
    writer.writerow(["glue_average", "", "", "", "score", average / 100 if rows else ""])


def main(f) -> int:
  """The `suite` command (flags of pretrain/finetune/__main__.py)."""
  try:
    if not f.init_from or not f.workdir:
      raise PretrainError("suite needs --init_from and --workdir")
    seeds = [int(s) for s in _floats(f.seeds, "seeds")]
    rates = _floats(f.learning_rates, "learning_rates") if f.learning_rates else None
    rows = run_suite(
      f.init_from,
      f.data_dir,
      f.workdir,
      suite=f.suite,
      tasks=f.tasks,
      seeds=seeds,
      learning_rates=rates,
      skip_missing=f.skip_missing,
      overrides=f.overrides,
      log=lambda line: print(line, file=sys.stderr, flush=True),
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(open(os.path.join(f.workdir, "results.md"), encoding="utf-8").read())
  return 0 if rows else 1
