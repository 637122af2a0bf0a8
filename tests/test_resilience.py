"""Fault injection: kill -9 at random moments, and what a restarted run reports about it."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from pretrain.checkpoint import Checkpointer
from pretrain.train import train

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)  # The CLI's config file and these helpers share the tests' tiny config.
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import REPO, final_params, read_rows  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config_file(tmp_path, corpus_path, steps):
  """A config file for the CLI that is exactly the in-process tiny config."""
  path = tmp_path / "tiny_config.py"
  path.write_text(
    "import sys\n"
    f"sys.path.insert(0, {TESTS!r})\n"
    "from conftest import make_tiny_config\n"
    "def get_config():\n"
    f"  c = make_tiny_config({corpus_path!r})\n"
    f"  c.train.update(steps={steps}, log_every=1)\n"
    "  c.eval.every_steps = 0\n"
    "  c.checkpoint.update(every_steps=1, keep=3)\n"
    "  return c\n",
    encoding="utf-8",
  )
  return str(path)


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return read_rows(workdir) if os.path.exists(path) else []


def test_ten_kill_nines_resume_to_bit_identical_params(text_corpus, tmp_path):
  steps = 40
  config_path = _config_file(tmp_path, text_corpus, steps)
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  kills, resumed_lives, first_kill = 0, 0, None
  while True:
    launched = time.time()
    has_checkpoint = (
      Checkpointer(workdir, 1, 3).latest_step() is not None if os.path.isdir(workdir) else False
    )
    rows_before = len(_rows(workdir))
    proc = subprocess.Popen(
      [sys.executable, "-m", "pretrain.train", f"--config={config_path}", f"--workdir={workdir}"],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    resumed_lives += has_checkpoint
    if kills < 10:
      deadline = time.time() + 120
      while (
        len(_rows(workdir)) <= rows_before + 1 and proc.poll() is None and time.time() < deadline
      ):
        time.sleep(
          0.05
        )  # Training has started (its first rows are written): now kill it at a random moment.
      time.sleep(rng.uniform(0.0, 0.8))
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        first_kill = first_kill or time.time()
        proc.wait()
        kills += 1
        continue
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    break
  assert kills == 10

  reference = str(tmp_path / "straight")
  c = make_tiny_config(text_corpus)
  c.train.update(steps=steps, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.update(every_steps=1, keep=3)
  train(c, reference)

  step_a, params_a = final_params(workdir)
  step_b, params_b = final_params(reference)
  assert step_a == step_b == steps
  flat_a, flat_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert len(flat_a) == len(flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(a, b)
  # Losses per step agree too: the last row logged for each step (a killed life may log a step twice).
  by_step_a = {r["step"]: r["loss"] for r in _rows(workdir) if "loss" in r}
  by_step_b = {r["step"]: r["loss"] for r in _rows(reference) if "loss" in r}
  assert by_step_a == by_step_b
  last = [r for r in _rows(workdir) if "goodput" in r][-1]
  assert last["restarts"] == resumed_lives and 0 < last["goodput"] < 1
  straight = [r for r in _rows(reference) if "goodput" in r][-1]
  assert straight["restarts"] == 0
  # Wall time runs from the first life's start, not this life's: the killed lives count against goodput.
  assert last["wall_seconds"] > launched - first_kill
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]
