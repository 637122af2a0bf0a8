"""The report from fixed job rows: sorted by mean eval loss, the statistics in report.md and results.csv,
and what it says about the method."""

import csv

import ml_collections
import pytest
from scipy import stats as scipy_stats

from pretrain.ablate import budget
from pretrain.ablate import report
from pretrain.ablate import sweep as sweep_lib

LOSSES = {"base": [2.50, 2.61, 2.47], "good": [2.41, 2.55, 2.40], "same": [2.52, 2.58, 2.49]}
PLAN = budget.Plan(steps=4, warmup_steps=1, tokens_per_step=256, flops_per_step=1e6)


def _rows():
  return [
    dict(
      variant=v,
      seed=k,
      status="done",
      eval_loss=loss,
      eval_accuracy=1 - loss / 10,
      accuracy_metric="eval_mlm_accuracy",
      probe_eval_score=None,
      params=1000,
      final_train_loss=loss,
      tokens_per_sec=100.0,
      peak_memory_mib=50.0,
      compile_seconds=1.0,
      attention_backend="xla",
      error="",
    )
    for v, losses in LOSSES.items()
    for k, loss in enumerate(losses)
  ]


def _settings(**changes):
  return sweep_lib.Settings(
    **dict(
      dict(
        seeds=3, seed_keys=("train.seed",), baseline="base", alpha=0.05, test="t", correction="none"
      ),
      **changes,
    )
  )


def test_report_sorts_tests_and_tabulates(tmp_path):
  sweep = ml_collections.ConfigDict(
    dict(base="configs/bert_tiny.py", variants={v: {} for v in LOSSES})
  )
  curves = {v: {k: ([(2, 3.0), (4, 2.5)], [(4, 2.6)]) for k in range(3)} for v in LOSSES}
  plans = {v: PLAN for v in LOSSES}
  rows = report.write_report(
    sweep,
    _settings(),
    _rows(),
    curves,
    plans,
    {"kind": "tokens", "value": None},
    {"train.seed": 0},
    str(tmp_path),
    "cmd",
  )
  assert [r["variant"] for r in rows][::3] == ["good", "base", "same"]  # By mean eval loss.
  text = (tmp_path / "report.md").read_text()
  p_good = scipy_stats.ttest_rel(LOSSES["good"], LOSSES["base"]).pvalue
  assert p_good < 0.05
  assert f"| {p_good:.3g} | better |" in text
  assert "| same | 3 |" in text and "no significant difference" in text
  assert "the same 4 steps x 256 tokens = 1,024 tokens for every variant" in text
  assert "## eval_mlm_accuracy (higher is better)" in text and "Downstream probe" not in text
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    table = {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}
  assert len(table) == 9 + 3 * len(report.STATISTICS)
  assert float(table["good", "p_value"]["eval_loss"]) == pytest.approx(p_good)
  assert table["good", "verdict"]["eval_accuracy"] == "better"  # Lower loss, higher accuracy.
  assert float(table["same", "sd"]["eval_loss"]) == pytest.approx(scipy_stats.tstd(LOSSES["same"]))
  assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_method_text_names_the_test_correction_and_its_limits():
  text = "\n".join(
    report._method(_settings(test="wilcoxon", correction="holm"), {"train.seed": 0}, "b", "flops")
  )
  assert "Wilcoxon signed-rank" in text and "Holm-adjusted" in text and "train.seed = 0 + k" in text
  assert (
    "smallest p-value is 0.25 ≥ α" in text and "warmup is the baseline's warmup fraction" in text
  )
  one = "\n".join(report._method(_settings(seeds=1), {"train.seed": 0}, "b", "tokens"))
  assert "no test is possible" in one and "warmup" not in one
