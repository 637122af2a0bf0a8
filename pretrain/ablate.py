"""Ablations: one base config, named overrides, the same data, seed and budget; one report.

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=DIR
  python -m pretrain.ablate --config=... --workdir=DIR --variant=gqa   # one variant (e.g. one pod job)
  python -m pretrain.ablate --config=... --workdir=DIR --report_only   # gather finished variants

A sweep config's `get_config()` returns:
  base            a config file (relative paths from the repository root)
  base_overrides  nested overrides applied to every variant (e.g. a CPU budget)
  variants        name -> nested overrides ({} is the base itself)

Every variant trains in its own process (so peak memory and compile time are
its own) into DIR/<name>/ with the unchanged `pretrain.train` loop; the budget
is the same number of tokens for all (steps x batch x sequence, and the data
and init seeds, may not be overridden per variant). A finished variant is
skipped; an interrupted one resumes from its checkpoint. DIR then holds
report.md (sorted by eval loss), results.csv and loss_curves.png. DIR may be a
gs:// URL (read and written through etils.epath).
"""

import csv
import importlib.util
import io
import json
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags

from pretrain import cli
from pretrain import jobs
from pretrain import train as train_lib
from pretrain.errors import PretrainError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A fair comparison: the same examples in the same order for the same number of steps.
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
RESULT = jobs.RESULT


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (a path relative to the repository root also works)."""
  full = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise PretrainError(f"base config {path!r} not found")
  spec = importlib.util.spec_from_file_location("_ablation_base", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flatten(overrides, prefix="") -> dict[str, Any]:
  flat = {}
  for key, value in overrides.items() if overrides else []:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _get(config, dotted: str):
  """The value at a dotted key, or None where a family has no such key (T5 has no data.max_seq_length)."""
  for part in dotted.split("."):
    if part not in config:
      return None
    config = config[part]
  return config


def _apply(config: ml_collections.ConfigDict, overrides, what: str) -> None:
  for key, value in _flatten(overrides).items():
    node = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise PretrainError(f"{what}: cannot set {key}={value!r} (no such config key: {part!r})")
      node = node[part]
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise PretrainError(f"{what}: cannot set {key}={value!r} ({e})") from e


def variant_configs(sweep) -> dict[str, ml_collections.ConfigDict]:
  """Each variant's full training config, checked to share the base's data, seed and budget."""
  if not sweep.variants:
    raise PretrainError("the sweep has no variants")
  base = load_config_file(sweep.base)
  _apply(base, sweep.get("base_overrides"), "base_overrides")
  out = {}
  for name, overrides in sweep.variants.items():
    if not name.replace("_", "").replace("-", "").isalnum():
      raise PretrainError(
        f"variant name {name!r}: use letters, digits, '-' and '_' (it names a folder)"
      )
    config = ml_collections.ConfigDict(base.to_dict())
    _apply(config, overrides, f"variant {name}")
    for key in FIXED_KEYS:
      if _get(config, key) != _get(base, key):
        raise PretrainError(
          f"variant {name} changes {key}; every variant must train on the same data "
          "for the same budget (set it in base_overrides instead)"
        )
    out[name] = config
  return out


def run_variant(name: str, config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Trains one variant in its own process unless its result is already there; returns its result record."""
  return jobs.run_job(
    name, train_lib.train, config, workdir, steps=int(config.train.steps), log=log
  )


def _read_rows(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  return [
    json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
  ]


def _accuracy_key(row: dict) -> str | None:
  keys = sorted(k for k in row if k.startswith("eval_") and k.endswith("accuracy"))
  return next((k for k in keys if "mlm" in k), keys[0] if keys else None)


def summarize(name: str, config, workdir: str, result: dict) -> dict:
  """One report row from a variant's metrics.jsonl and result record."""
  rows = _read_rows(workdir)
  header = [r for r in rows if "num_params" in r]
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval_loss" in r]
  last_eval = eval_rows[-1] if eval_rows else {}
  acc_key = _accuracy_key(last_eval)
  speeds = sorted(r["tokens_per_sec"] for r in train_rows)
  return {
    "variant": name,
    "status": result.get("status", "missing"),
    "params": int(header[0]["num_params"]) if header else None,
    "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
    "eval_loss": last_eval.get("eval_loss"),
    "eval_accuracy": last_eval.get(acc_key) if acc_key else None,
    "accuracy_metric": acc_key or "",
    "tokens_per_sec": speeds[len(speeds) // 2] if speeds else None,
    "peak_memory_mib": result["peak_memory_bytes"] / 2**20
    if result.get("peak_memory_bytes")
    else None,
    "peak_memory_kind": result.get("peak_memory_kind", ""),
    "compile_seconds": header[0]["compile_seconds"] if header else None,
    "attention_backend": header[0].get("attention_backend", "") if header else "",
    "tokens_per_step": header[0].get("tokens_per_step") if header else None,
    "steps": result.get("steps"),
    "error": result.get("error", ""),
  }


def _sort_key(row):
  loss = row["eval_loss"]
  return (
    loss is None or not math.isfinite(loss),
    loss if loss is not None else 0.0,
    row["variant"],
  )


def _fmt(value, spec="") -> str:
  if value is None:
    return "-"
  return format(value, spec) if spec else str(value)


def _budget(rows: list[dict]) -> str:
  """'250 steps x 2,048 tokens = 512,000 tokens' from the first row that knows."""
  for r in rows:
    if r["tokens_per_step"] and r.get("steps"):
      tokens, steps = int(r["tokens_per_step"]), int(r["steps"])
      return f"{steps:,} steps x {tokens:,} tokens = {steps * tokens:,} tokens"
  return "number of steps and tokens per step"


def write_report(sweep, rows: list[dict], curves: dict, workdir: str, command: str) -> None:
  """report.md, results.csv and loss_curves.png in `workdir`."""
  rows = sorted(rows, key=_sort_key)
  fields = list(rows[0])
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  (epath.Path(workdir) / "results.csv").write_text(table.getvalue(), encoding="utf-8")

  acc_name = next((r["accuracy_metric"] for r in rows if r["accuracy_metric"]), "eval accuracy")
  lines = [
    f"# Ablation report: {os.path.basename(workdir.rstrip(os.sep))}",
    "",
    f"Base config: `{sweep.base}` with base overrides `{json.dumps(_flatten(sweep.get('base_overrides')))}`.",
    f"Budget: the same {_budget(rows)} for every variant, "
    f"same data order and seeds. Command: `{command}`.",
    "",
    f"| variant | params | final train loss | eval loss | {acc_name} | tokens/s | peak memory (MiB) "
    "| compile s | attention backend |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for r in rows:
    name = r["variant"] if r["status"] == "done" else f"{r['variant']} ({r['status']})"
    lines.append(
      f"| {name} | {_fmt(r['params'], ',')} | {_fmt(r['final_train_loss'], '.4f')} | "
      f"{_fmt(r['eval_loss'], '.4f')} | {_fmt(r['eval_accuracy'], '.4f')} | {_fmt(r['tokens_per_sec'], ',.0f')} | "
      f"{_fmt(r['peak_memory_mib'], ',.0f')} | {_fmt(r['compile_seconds'], '.1f')} | {r['attention_backend']} |"
    )
  overrides = {name: _flatten(o) for name, o in sweep.variants.items()}
  lines += [
    "",
    "Sorted by eval loss (lower is better). Peak memory is the device's peak where the runtime "
    "reports it, else the training process' peak resident memory.",
    "",
    "## Variants",
    "",
  ]
  lines += [
    f"- `{name}`: `{json.dumps(o) if o else 'the base config'}`" for name, o in overrides.items()
  ]
  failed = [r for r in rows if r["error"]]
  if failed:
    lines += ["", "## Failures", ""] + [f"- `{r['variant']}`: {r['error']}" for r in failed]
  (epath.Path(workdir) / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
  _plot(curves, epath.Path(workdir) / "loss_curves.png")


def _plot(curves: dict, path: epath.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for name, (train_xy, eval_xy) in curves.items():
    (line,) = ax_train.plot(*zip(*train_xy), label=name) if train_xy else (None,)
    if eval_xy:
      ax_eval.plot(*zip(*eval_xy), marker="o", label=name, color=line.get_color() if line else None)
  for ax, title in ((ax_train, "train loss"), (ax_eval, "eval loss")):
    ax.set_title(title)
    ax.set_xlabel("tokens")
    ax.grid(alpha=0.3)
  ax_train.set_ylabel("loss")
  ax_eval.legend(fontsize="small")
  fig.tight_layout()
  png = io.BytesIO()  # Through memory: matplotlib writes local files only.
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  path.write_bytes(png.getvalue())


def _curves(workdir: str):
  rows = _read_rows(workdir)
  per_step = next((r["tokens_per_step"] for r in rows if "tokens_per_step" in r), 1)
  train_xy = [(r["step"] * per_step, r["loss"]) for r in rows if "loss" in r]
  eval_xy = [(r["step"] * per_step, r["eval_loss"]) for r in rows if "eval_loss" in r]
  return train_xy, eval_xy


def run_sweep(
  sweep,
  workdir: str,
  *,
  only: list[str] | None = None,
  report_only: bool = False,
  command: str = "",
  log=print,
) -> list[dict]:
  """Runs the sweep's variants (all or `only`) and writes the report; returns its rows."""
  configs = variant_configs(sweep)
  unknown = sorted(set(only or []) - set(configs))
  if unknown:
    raise PretrainError(
      f"unknown variant(s) {', '.join(unknown)}; the sweep has {', '.join(configs)}"
    )
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  rows, curves = [], {}
  for name, config in configs.items():
    variant_dir = os.path.join(workdir, name)  # Also right for a URL.
    if not report_only and (not only or name in only):
      result = run_variant(name, config, variant_dir, log=log)
    else:
      path = epath.Path(variant_dir) / RESULT
      result = (
        json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"status": "not run"}
      )
    rows.append(summarize(name, config, variant_dir, result))
    curves[name] = _curves(variant_dir)
  write_report(
    sweep, rows, curves, workdir, command or f"python -m pretrain.ablate --workdir={workdir}"
  )
  return sorted(rows, key=_sort_key)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file(
    "config", None, "Sweep config, e.g. configs/ablations/attention.py.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Sweep directory: one folder per variant plus the report.")
  flags.DEFINE_list("variant", [], "Run only these variants (others are reported if finished).")
  flags.DEFINE_bool("report_only", False, "Train nothing; write the report from what has finished.")


def main(argv):
  del argv
  cli.quiet_library_logs()
  fl = flags.FLAGS
  if fl.config is None or not fl.workdir:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  # The command that trains the sweep: how this report was gathered (--report_only, --variant) is not it.
  args, skip_value = [], False
  for a in sys.argv[1:]:
    if skip_value:
      skip_value = False
    elif a in ("--variant", "-variant"):
      skip_value = True
    elif not a.lstrip("-").startswith(("report_only", "noreport_only", "variant=")):
      args.append(a)
  command = " ".join(["python -m pretrain.ablate"] + args)
  try:
    rows = run_sweep(
      fl.config,
      fl.workdir,
      only=fl.variant,
      report_only=fl.report_only,
      command=command,
      log=lambda s: print(s, file=sys.stderr, flush=True),
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print((epath.Path(fl.workdir) / "report.md").read_text(encoding="utf-8"))
  if any(r["status"] != "done" for r in rows if not fl.variant or r["variant"] in fl.variant):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
