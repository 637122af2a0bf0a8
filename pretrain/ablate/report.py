"""The sweep's report: one row per (variant, seed) job, the statistics over seeds, and the files in DIR.

report.md        per variant, sorted by mean eval loss: mean +- sd, 95% interval, the paired
                 difference to the baseline with its p-value and verdict (eval loss, accuracy,
                 the probe's score), then the cost per job (steps, tokens, FLOPs, speed, memory)
results.csv      one row per (variant, seed), then per variant one row per statistic
loss_curves.png  train and eval loss against tokens (and model FLOPs for a FLOP budget): a
                 variant's mean over seeds with its min-max band
"""

import csv
import io
import json
import math
import os

from etils import epath
import numpy as np

from pretrain.ablate import stats
from pretrain.ablate import sweep as sweep_lib

# (row key, title, higher is better): the metrics compared across variants.
QUALITY = (
  ("eval_loss", "Eval loss", False),
  ("eval_accuracy", None, True),  # Titled by the family's accuracy metric.
  ("probe_eval_score", "Downstream probe: eval_score", True),
)
STATISTICS = ("mean", "sd", "ci95_low", "ci95_high", "diff_vs_baseline", "p_value", "verdict")


def read_rows(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  return [
    json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
  ]


def _accuracy_key(row: dict) -> str | None:
  keys = sorted(k for k in row if k.startswith("eval_") and k.endswith("accuracy"))
  return next((k for k in keys if "mlm" in k), keys[0] if keys else None)


def job_row(variant: str, seed: int, plan, workdir: str, result: dict, probe: dict | None) -> dict:
  """One (variant, seed) job's row from its metrics.jsonl, result record and probe result."""
  rows = read_rows(workdir)
  header = [r for r in rows if "num_params" in r]
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval_loss" in r]
  last_eval = eval_rows[-1] if eval_rows else {}
  acc_key = _accuracy_key(last_eval)
  speeds = sorted(r["tokens_per_sec"] for r in train_rows)
  probe = probe or {}
  return {
    "variant": variant,
    "seed": seed,
    "status": result.get("status", "missing"),
    "steps": plan.steps,
    "tokens": plan.tokens,
    "model_flops": plan.flops,
    "params": int(header[0]["num_params"]) if header else None,
    "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
    "eval_loss": last_eval.get("eval_loss"),
    "eval_accuracy": last_eval.get(acc_key) if acc_key else None,
    "accuracy_metric": acc_key or "",
    "probe_status": probe.get("status", ""),
    "probe_eval_score": (probe.get("last") or {}).get("eval_score")
    if probe.get("status") == "done"
    else None,
    "tokens_per_sec": speeds[len(speeds) // 2] if speeds else None,
    "peak_memory_mib": result["peak_memory_bytes"] / 2**20
    if result.get("peak_memory_bytes")
    else None,
    "peak_memory_kind": result.get("peak_memory_kind", ""),
    "compile_seconds": header[0]["compile_seconds"] if header else None,
    "attention_backend": header[0].get("attention_backend", "") if header else "",
    "tokens_per_step": plan.tokens_per_step,
    "warmup_steps": plan.warmup_steps,
    "error": "; ".join(e for e in (result.get("error", ""), probe.get("error", "")) if e),
  }


def curves(workdir: str) -> tuple[list, list]:
  """(train, eval) loss as [(step, loss)] of one job."""
  rows = read_rows(workdir)
  return (
    [(r["step"], r["loss"]) for r in rows if "loss" in r],
    [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
  )


def aggregate(rows: list[dict], settings) -> dict[str, dict]:
  """variant -> metric -> (Summary, Comparison) over the variant's finished seeds."""
  done = [r for r in rows if r["status"] == "done"]
  variants = list(dict.fromkeys(r["variant"] for r in rows))
  out = {v: {} for v in variants}
  for key, _, higher in QUALITY:
    by_seed = {
      v: {r["seed"]: r[key] for r in done if r["variant"] == v and r[key] is not None}
      for v in variants
    }
    comparisons = {
      v: stats.compare(
        by_seed[v],
        by_seed[settings.baseline],
        higher_is_better=higher,
        alpha=settings.alpha,
        test=settings.test,
      )
      for v in variants
      if v != settings.baseline
    }
    if settings.correction == "holm":
      comparisons = stats.holm(comparisons, settings.alpha, higher)
    for v in variants:
      out[v][key] = (stats.summarize(by_seed[v].values()), comparisons.get(v))
  return out


def _mean(rows, key):
  values = [r[key] for r in rows if r[key] is not None]
  return float(np.mean(values)) if values else None


def _fmt(value, spec="") -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  return format(value, spec) if spec else str(value)


def _sorted_variants(agg: dict) -> list[str]:
  def key(v):
    mean = agg[v]["eval_loss"][0].mean
    return (not math.isfinite(mean), mean if math.isfinite(mean) else 0.0, v)

  return sorted(agg, key=key)


def _quality_table(agg, order, key, title, higher, settings) -> list[str]:
  if not any(agg[v][key][0].n for v in order):
    return []
  lines = [
    f"## {title} ({'higher' if higher else 'lower'} is better)",
    "",
    f"| variant | seeds | mean ± sd | 95% CI | Δ vs {settings.baseline} [95% CI] | p | verdict |",
    "|---|---:|---:|---:|---:|---:|---|",
  ]
  for v in order:
    s, c = agg[v][key]
    sd = f" ± {s.sd:.4f}" if math.isfinite(s.sd) else ""
    ci = f"[{s.ci_low:.4f}, {s.ci_high:.4f}]" if math.isfinite(s.ci_low) else "-"
    if c is None:
      diff, p, verdict = "-", "-", stats.BASELINE
    else:
      band = (
        f" [{c.diff_ci_low:+.4f}, {c.diff_ci_high:+.4f}]" if math.isfinite(c.diff_ci_low) else ""
      )
      diff = f"{c.diff:+.4f}{band}" if math.isfinite(c.diff) else "-"
      p, verdict = (f"{c.p_value:.3g}" if math.isfinite(c.p_value) else "-"), c.verdict
    lines.append(f"| {v} | {s.n} | {_fmt(s.mean, '.4f')}{sd} | {ci} | {diff} | {p} | {verdict} |")
  return lines + [""]


def _method(settings, base_keys, budget_text, kind) -> list[str]:
  seeds = ", ".join(f"{k} = {base_keys[k]} + k" for k in settings.seed_keys) or "nothing"
  test = {"t": "a two-sided paired t-test", "wilcoxon": "a two-sided Wilcoxon signed-rank test"}
  lines = [
    f"- Budget: {budget_text}."
    + (
      " Learning-rate schedule: each variant decays over its own steps, and its warmup is the "
      "baseline's warmup fraction of the run (warmup_steps x steps / baseline steps)."
      if kind == "flops"
      else ""
    ),
    f"- Seeds: {settings.seeds} per variant; seed index k sets {seeds}, so seed k has the same "
    "data order and seeds in every variant.",
  ]
  if settings.seeds == 1:
    lines.append(
      "- Statistics: one seed per variant, so no test is possible (a paired test needs two or more "
      "seeds): the verdicts say so, and differences are unconfirmed."
    )
    return lines
  correction = (
    "p-values Holm-adjusted over the comparisons with the baseline"
    if settings.correction == "holm"
    else "p-values not corrected for the number of comparisons"
  )
  lines.append(
    f"- Statistics: mean ± sample sd over seeds and a 95% t interval; Δ = variant − baseline "
    f"(`{settings.baseline}`) paired by seed, {test[settings.test]}, verdict at α = "
    f"{settings.alpha:g} ({correction})."
  )
  floor = stats.minimum_p_value(settings.seeds, settings.test)
  if floor >= settings.alpha:
    lines.append(
      f"- With {settings.seeds} seeds the signed-rank test's smallest p-value is {floor:.3g} ≥ α: "
      "it cannot find a difference; add seeds or use test='t'."
    )
  return lines


def write_report(
  sweep,
  settings,
  rows: list[dict],
  job_curves: dict,
  plans: dict,
  budget: dict,
  seed_base: dict,
  workdir: str,
  command: str,
) -> list[dict]:
  """report.md, results.csv and loss_curves.png in `workdir`; returns the rows sorted as the report."""
  from pretrain.ablate import budget as budget_lib  # pylint: disable=g-import-not-at-top

  agg = aggregate(rows, settings)
  order = _sorted_variants(agg)
  rows = sorted(rows, key=lambda r: (order.index(r["variant"]), r["seed"]))
  _write_csv(rows, agg, order, epath.Path(workdir) / "results.csv")

  acc_name = next((r["accuracy_metric"] for r in rows if r["accuracy_metric"]), "eval accuracy")
  lines = [
    f"# Ablation report: {os.path.basename(workdir.rstrip('/' + os.sep))}",
    "",
    f"- Base config: `{sweep.base}` with base overrides "
    f"`{json.dumps(sweep_lib.flatten(sweep.get('base_overrides')))}`.",
    *_method(
      settings,
      seed_base,
      budget_lib.describe(budget["kind"], budget["value"], plans),
      budget["kind"],
    ),
    f"- Command: `{command}`.",
    "",
  ]
  for key, title, higher in QUALITY:
    lines += _quality_table(agg, order, key, title or acc_name, higher, settings)
  lines += [
    "## Cost per job (mean over finished seeds)",
    "",
    "| variant | params | steps | tokens | model FLOPs | final train loss | tokens/s "
    "| peak memory (MiB) | compile s | attention backend |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for v in order:
    mine = [r for r in rows if r["variant"] == v]
    done = [r for r in mine if r["status"] == "done"] or mine
    p = plans[v]
    lines.append(
      f"| {v} | {_fmt(done[0]['params'], ',')} | {p.steps:,} | {p.tokens:,} | {p.flops:.3e} | "
      f"{_fmt(_mean(done, 'final_train_loss'), '.4f')} | {_fmt(_mean(done, 'tokens_per_sec'), ',.0f')} | "
      f"{_fmt(_mean(done, 'peak_memory_mib'), ',.0f')} | {_fmt(_mean(done, 'compile_seconds'), '.1f')} | "
      f"{done[0]['attention_backend']} |"
    )
  lines += [
    "",
    "Sorted by mean eval loss (lower is better). Model FLOPs: matmul FLOPs of forward + backward, "
    "attention over the query-key pairs each variant's mask keeps. Peak memory is the device's peak "
    "where the runtime reports it, else the training process' peak resident memory.",
    "",
    "## Variants",
    "",
  ]
  lines += [
    f"- `{name}`: `{json.dumps(sweep_lib.flatten(o)) if o else 'the base config'}`"
    for name, o in sweep.variants.items()
  ]
  unfinished = [r for r in rows if r["status"] != "done" or r["error"]]
  if unfinished:
    lines += ["", "## Jobs not finished", ""] + [
      f"- `{r['variant']}` seed {r['seed']}: {r['status']}"
      + (f": {r['error']}" if r["error"] else "")
      for r in unfinished
    ]
  (epath.Path(workdir) / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
  _plot(
    job_curves, plans, order, budget["kind"] == "flops", epath.Path(workdir) / "loss_curves.png"
  )
  return rows


def _write_csv(rows, agg, order, path) -> None:
  fields = list(rows[0])
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  for v in order:
    mine = [r for r in rows if r["variant"] == v and r["status"] == "done"]
    for statistic in STATISTICS:
      out = {"variant": v, "seed": statistic}
      for key, _, _ in QUALITY:
        s, c = agg[v][key]
        out[key] = {
          "mean": s.mean,
          "sd": s.sd,
          "ci95_low": s.ci_low,
          "ci95_high": s.ci_high,
          "diff_vs_baseline": c.diff if c else None,
          "p_value": c.p_value if c else None,
          "verdict": c.verdict if c else stats.BASELINE,
        }[statistic]
      if statistic == "mean":
        for key in ("final_train_loss", "tokens_per_sec", "peak_memory_mib", "compile_seconds"):
          out[key] = _mean(mine, key)
      writer.writerow(out)
  path.write_text(table.getvalue(), encoding="utf-8")


def _band(per_seed: list[list]) -> tuple[np.ndarray, ...]:
  """(steps, mean, min, max) over the steps every seed logged."""
  common = sorted(set.intersection(*(set(s for s, _ in xy) for xy in per_seed)))
  values = np.asarray([[dict(xy)[s] for s in common] for xy in per_seed], float)
  return np.asarray(common, float), values.mean(0), values.min(0), values.max(0)


def _plot(job_curves: dict, plans: dict, order: list[str], with_flops: bool, path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  xs = [("tokens", "tokens_per_step")] + ([("model FLOPs", "flops_per_step")] if with_flops else [])
  fig, axes = plt.subplots(len(xs), 2, figsize=(12, 4.5 * len(xs)), sharey=True, squeeze=False)
  for v in order:
    seeds = job_curves.get(v, {})
    color = None
    for which in (0, 1):  # train, eval
      per_seed = [xy[which] for xy in seeds.values() if xy[which]]
      if not per_seed:
        continue
      steps, mean, low, high = _band(per_seed)
      if not len(steps):
        continue
      for row, (_, attr) in enumerate(xs):
        ax, x = axes[row][which], steps * getattr(plans[v], attr)
        (line,) = ax.plot(
          x, mean, marker="o" if which else None, color=color, label=f"{v} (n={len(per_seed)})"
        )
        color = line.get_color()
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
  for row, (xlabel, _) in enumerate(xs):
    for which, title in enumerate(("train loss", "eval loss")):
      ax = axes[row][which]
      ax.set_title(f"{title}: mean and min-max over seeds")
      ax.set_xlabel(xlabel)
      ax.grid(alpha=0.3)
    axes[row][0].set_ylabel("loss")
    if axes[row][1].get_legend_handles_labels()[0]:
      axes[row][1].legend(fontsize="small")
  fig.tight_layout()
  png = io.BytesIO()  # Through memory: matplotlib writes local files only.
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  path.write_bytes(png.getvalue())
