"""A sweep end to end: 2 variants x 2 seeds under a FLOP budget, one job interrupted and resumed, a
downstream probe per job, the report's statistics, and a directory of another sweep refused."""

import csv
import functools
import json
import os
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from pretrain import ablate
from pretrain import jobs
from pretrain.ablate import budget
from pretrain.ablate import probe
from pretrain.ablate import runner
from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError
from pretrain.training import optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # tiny_sweep, and probe_stub for the probe jobs' processes.
from tiny_sweep import tiny_sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {
  "mha": {},
  "mqa_window": {"model": {"attention": {"num_kv_heads": 1, "sliding_window": 4}}},
}


def _flop_sweep(corpus, **settings):
  """2 seeds of MHA and of MQA with a window of 4, at four steps' worth of MHA's model FLOPs."""
  token_sweep = tiny_sweep(corpus, VARIANTS)
  configs = ablate.variant_configs(token_sweep)
  mha = budget.plans(token_sweep, configs, "mha")["mha"]
  settings = dict(dict(seeds=2, budget=dict(flops=4 * mha.flops_per_step + 1.0)), **settings)
  s = tiny_sweep(corpus, VARIANTS, **settings)
  del s.base_overrides["train"]["steps"]  # The budget sets the steps.
  s.probe = dict(config=os.path.join(HERE, "probe_stub.py"), overrides=dict(note="probed"))
  return s


def _files(folder):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)


def test_sweep_of_seeds_with_probe_resume_report_and_refusal(text_corpus, tmp_path, monkeypatch):
  # A stand-in fine-tune keeps the four probes fast; the next test runs the real one.
  monkeypatch.setattr(probe, "JOB", "probe_stub:finetune")
  sweep = _flop_sweep(text_corpus)
  workdir = str(tmp_path / "sweep")
  prepared = runner.prepare(sweep, workdir)  # What the first run of the sweep does first.
  plans = prepared.plans
  assert (
    plans["mha"].steps == 4 and plans["mqa_window"].steps == 5
  )  # Cheaper per token: more steps.

  # Stop mha seed 1 half way, as a SIGTERM would (train saves and returns): recorded as interrupted,
  # the sweep must resume it, neither skip it nor restart it.
  from pretrain import train as train_module  # pylint: disable=g-import-not-at-top

  interrupted = ablate.job_dir(workdir, "mha", 1)
  job = prepared.job_config("mha", 1)
  assert (job.train.seed, job.data.seed, job.train.steps) == (1, 1, 4)
  monkeypatch.setattr(train_module, "train", functools.partial(train_module.train, stop_at_step=2))
  jobs.run_in_process(train_module.train, job.to_dict(), interrupted, steps=4)
  monkeypatch.setattr(train_module, "train", train_module.train.func)
  assert jobs.read_result(interrupted)["status"] == "interrupted"

  rows = ablate.run_sweep(sweep, workdir, log=lambda s: None)
  assert [(r["variant"], r["seed"]) for r in rows] in (
    [("mha", 0), ("mha", 1), ("mqa_window", 0), ("mqa_window", 1)],
    [("mqa_window", 0), ("mqa_window", 1), ("mha", 0), ("mha", 1)],
  )
  for r in rows:
    assert r["status"] == "done" and r["probe_status"] == "done" and not r["error"]
    assert r["steps"] == plans[r["variant"]].steps and r["tokens"] == r["steps"] * 8 * 32
    assert r["params"] > 0 and r["tokens_per_sec"] > 0 and r["peak_memory_mib"] > 10
    assert (
      r["compile_seconds"] > 0 and 0 < r["final_train_loss"] < 10 and 0 <= r["eval_accuracy"] <= 1
    )
    # The probe fine-tuned this job's own workdir, with this seed.
    folder = ablate.job_dir(workdir, r["variant"], r["seed"])
    assert r["probe_eval_score"] == pytest.approx(1.0 / r["eval_loss"])
    with open(os.path.join(probe.workdir(workdir, r["variant"], r["seed"]), "finetuned.json")) as f:
      assert json.load(f) == dict(
        step=3, eval_score=r["probe_eval_score"], seed=r["seed"], init_from=folder, note="probed"
      )
  by = {(r["variant"], r["seed"]): r for r in rows}
  assert by["mha", 0]["eval_loss"] != by["mha", 1]["eval_loss"]  # Seeds differ in init and data.
  steps = [
    json.loads(l)["step"] for l in open(os.path.join(interrupted, "metrics.jsonl")) if '"loss"' in l
  ]
  assert steps == [2, 4]  # Steps 1-2 from the interrupted run, 3-4 after the resume.
  last = [
    json.loads(l)
    for l in open(os.path.join(ablate.job_dir(workdir, "mqa_window", 0), "metrics.jsonl"))
  ]
  assert max(r["step"] for r in last) == 5  # The budget's steps reached the job.
  # And its schedule: warmup 2 of mha's 4 steps scaled to 5 (2.5, rounded up), decay to step 5.
  job = prepared.job_config("mqa_window", 0)
  assert (job.train.steps, job.optimizer.warmup_steps) == (5, 3)
  schedule = optimizer.learning_rate_schedule(job.optimizer, 5)
  logged = {r["step"]: r["learning_rate"] for r in last if "learning_rate" in r}
  assert logged == {s: pytest.approx(float(schedule(s - 1))) for s in (2, 4, 5)}

  with open(os.path.join(workdir, "results.csv"), encoding="utf-8") as f:
    table = list(csv.DictReader(f))
  stat = {(r["variant"], r["seed"]): r for r in table}
  assert len(table) == 4 + 2 * 7
  losses = {v: [by[v, k]["eval_loss"] for k in (0, 1)] for v in VARIANTS}
  assert float(stat["mha", "mean"]["eval_loss"]) == pytest.approx(sum(losses["mha"]) / 2)
  expected_p = scipy_stats.ttest_rel(losses["mqa_window"], losses["mha"]).pvalue
  assert float(stat["mqa_window", "p_value"]["eval_loss"]) == pytest.approx(expected_p)
  assert stat["mha", "verdict"]["eval_loss"] == "baseline"
  assert stat["mqa_window", "verdict"]["eval_loss"] in (
    "better",
    "worse",
    "no significant difference",
  )
  report = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  assert "model-FLOP budget" in report and "Seeds: 2 per variant" in report
  assert "## Eval loss (lower is better)" in report and "## Downstream probe: eval_score" in report
  assert f"| {stat['mqa_window', 'verdict']['eval_loss']} |" in report
  assert "| mqa_window | 2 |" in report and "| mha | 2 |" in report
  png = os.path.join(workdir, "loss_curves.png")
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000

  # A rerun trains nothing; --report_only rewrites the same report.
  before = {f: os.path.getmtime(f) for f in _files(workdir) if f.endswith("metrics.jsonl")}
  messages = []
  again = ablate.run_sweep(sweep, workdir, log=messages.append)
  assert all(m.endswith("finished earlier, skipped") for m in messages) and len(messages) == 8
  assert before == {f: os.path.getmtime(f) for f in before}
  assert [r["eval_loss"] for r in again] == [r["eval_loss"] for r in rows]

  # A sweep of other seeds, budget or base config is refused there, and nothing is touched.
  files = {f: os.path.getmtime(f) for f in _files(workdir)}
  for other, match in (
    (dict(seeds=3), "another number of seeds"),
    (dict(budget=dict(flops=sweep.budget.flops * 2)), "another budget"),
  ):
    with pytest.raises(PretrainError, match=match):
      ablate.run_sweep(_flop_sweep(text_corpus, **other), workdir, log=lambda s: None)
  wider = _flop_sweep(text_corpus)
  wider.base_overrides.model.intermediate_size = 128
  with pytest.raises(PretrainError, match="another base config .model.intermediate_size: 64"):
    ablate.run_sweep(wider, workdir, report_only=True, log=lambda s: None)
  # The command line: one error line, exit 2.
  sweep_file = tmp_path / "other_sweep.py"
  sweep_file.write_text(
    f"import sys\nsys.path.insert(0, {HERE!r})\nfrom tiny_sweep import tiny_sweep\n\n\n"
    f"def get_config():\n  return tiny_sweep({text_corpus!r}, {VARIANTS!r}, seeds=2)\n"
  )
  cli = subprocess.run(
    [sys.executable, "-m", "pretrain.ablate", f"--config={sweep_file}", f"--workdir={workdir}"],
    capture_output=True,
    text=True,
    cwd=sweep_lib.REPO,
    timeout=300,
  )
  assert cli.returncode == 2 and cli.stdout == ""
  (line,) = [l for l in cli.stderr.splitlines() if l.startswith("error:")]
  assert "holds a sweep with another base config" in line
  assert files == {f: os.path.getmtime(f) for f in _files(workdir)}


def test_the_probe_fine_tunes_each_pretrained_job_for_real(text_corpus, tmp_path):
  """One variant x one seed with the real `pretrain.finetune.finetune` as the probe: the embedded
  word-order task from the job's own checkpoint, its dev accuracy in the row and the report."""
  sweep = tiny_sweep(text_corpus, {"mha": {}}, seeds=1)
  sweep.probe = dict(
    config="configs/finetune/embedded_order.py",
    overrides=dict(
      finetune=dict(max_seq_length=32),
      train=dict(steps=3, batch_size=8),
      eval=dict(batch_size=32),
      checkpoint=dict(every_steps=0),
      metrics=dict(progress_bar=False),
    ),
  )
  workdir = str(tmp_path / "sweep")
  (row,) = ablate.run_sweep(sweep, workdir, log=lambda s: None)
  assert row["status"] == "done" and row["probe_status"] == "done" and not row["error"]
  probed = probe.workdir(workdir, "mha", 0)
  with open(os.path.join(probed, "metrics.jsonl"), encoding="utf-8") as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == 3 and row["probe_eval_score"] == pytest.approx(last["eval_score"])
  assert 0.0 < row["probe_eval_score"] < 1.0  # An accuracy over the 462 dev sentences.
  from pretrain.convert import checkpoints  # pylint: disable=g-import-not-at-top

  saved = checkpoints.locate(probed)[2]  # The fine-tuned checkpoint's own config.
  assert saved["init_from"] == ablate.job_dir(workdir, "mha", 0)
  assert saved["finetune"]["task"] == "embedded_order"
  with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    assert "## Downstream probe: eval_score" in f.read()
