"""The GLUE suite: one process per job, finished jobs skipped, the papers' table from the medians."""

import csv
import json
import os

import pytest

from pretrain import jobs
from pretrain.errors import PretrainError
from pretrain.finetune import suite

from glue_files import LAYOUTS, write_glue  # pylint: disable=g-import-not-at-top,wrong-import-position

OVERRIDES = ("finetune.max_seq_length=32", "eval.batch_size=8", "train.batch_size=8")


def test_the_suite_runs_skips_finished_jobs_and_writes_the_table(pretrained, tmp_path):
  data = write_glue(tmp_path / "glue", {"rte": LAYOUTS["rte"]})
  workdir = str(tmp_path / "suite")
  # A job finished earlier (its result as run_job writes it) is not run again: its folder stays empty.
  done = os.path.join(workdir, "rte", "lr_5e-05", "seed_0")
  os.makedirs(done)
  fake = {"eval_accuracy": 0.75, "eval_score": 0.75, "step": 1}
  with open(os.path.join(done, jobs.RESULT), "w", encoding="utf-8") as f:
    json.dump({"status": "done", "error": "", "steps": 1, "last": fake}, f)
  logged = []
  kwargs = dict(tasks=["rte"], seeds=[0], learning_rates=[2e-5, 5e-5], overrides=OVERRIDES)
  rows = suite.run_suite(pretrained, data, workdir, log=logged.append, **kwargs)
  assert "rte/lr_5e-05/seed_0: finished earlier, skipped" in logged
  assert os.listdir(done) == [jobs.RESULT]
  ran = jobs.read_result(os.path.join(workdir, "rte", "lr_2e-05", "seed_0"))
  assert ran["status"] == "done" and ran["last"]["step"] == 1, ran
  assert ran["last"]["eval_accuracy"] in (0.0, 1.0)  # One dev example.
  best = max([(ran["last"]["eval_score"], 2e-5), (0.75, 5e-5)])
  assert rows[0]["best_lr"] == best[1] and rows[0]["score"] == 100 * best[0]
  table = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
  cell = f"{100 * best[0]:.1f}"
  assert "| model | RTE | Average |" in table and f"| dev | {cell} | {cell} |" in table
  with open(os.path.join(workdir, "results.csv"), encoding="utf-8") as f:
    lines = list(csv.DictReader(f))
  assert {(r["task"], r["learning_rate"], r["best"]) for r in lines if r["metric"] == "score"} == {
    ("rte", "2e-05", str(int(best[1] == 2e-5))),
    ("rte", "5e-05", str(int(best[1] == 5e-5))),
    ("glue_average", "", ""),
  }
  # A rerun runs nothing.
  logged.clear()
  suite.run_suite(pretrained, data, workdir, log=logged.append, **kwargs)
  assert all("finished earlier, skipped" in line for line in logged), logged


def test_a_missing_task_folder_is_an_error_unless_skipped(pretrained, tmp_path):
  data = write_glue(tmp_path / "glue", {"rte": LAYOUTS["rte"]})
  with pytest.raises(PretrainError, match=r"has no CoLA folder; --skip_missing"):
    suite.run_suite(pretrained, data, str(tmp_path / "out"), tasks=["cola", "rte"])
  assert not (tmp_path / "out").exists()
  logged = []
  # Skipped: nothing else to run here but the table of what there is (an RTE job already done).
  done = tmp_path / "out" / "rte" / "lr_2e-05" / "seed_0"
  done.mkdir(parents=True)
  (done / jobs.RESULT).write_text(
    json.dumps({"status": "done", "steps": 1, "last": {"eval_accuracy": 0.5, "eval_score": 0.5}})
  )
  suite.run_suite(
    pretrained,
    data,
    str(tmp_path / "out"),
    tasks=["cola", "rte"],
    seeds=[0],
    learning_rates=[2e-5],
    skip_missing=True,
    overrides=OVERRIDES,
    log=logged.append,
  )
  assert any(line.startswith("cola: ") and "missing; skipped" in line for line in logged)
