"""Fault injection, each fault proven to have happened: kill -9 at random moments and during an
asynchronous save, a checkpoint write that really fails (a file-size limit), SIGTERM and SIGINT."""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from pretrain.train import train

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)  # The CLI's config file and these helpers share the tests' tiny config.
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import REPO, final_params, read_rows  # pylint: disable=g-import-not-at-top,wrong-import-position

TMP = ".orbax-checkpoint-tmp"  # Orbax writes a step here and renames it to `<step>` once complete.
RESUMED = re.compile(r"resumed from step (\d+) \(restart (\d+)\)")


def _tiny(corpus_path, steps, every, keep):
  c = make_tiny_config(corpus_path)
  c.train.update(steps=steps, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.update(every_steps=every, keep=keep)
  return c


def _config_file(tmp_path, corpus_path, steps, every=1, keep=3):
  """A config file for the CLI that is exactly `_tiny(corpus_path, steps, every, keep)`."""
  path = tmp_path / f"tiny_config_{steps}_{every}_{keep}.py"
  path.write_text(
    "import sys\n"
    f"sys.path.insert(0, {TESTS!r})\n"
    "from conftest import make_tiny_config\n"
    "def get_config():\n"
    f"  c = make_tiny_config({corpus_path!r})\n"
    f"  c.train.update(steps={steps}, log_every=1)\n"
    "  c.eval.every_steps = 0\n"
    f"  c.checkpoint.update(every_steps={every}, keep={keep})\n"
    "  return c\n",
    encoding="utf-8",
  )
  return str(path)


def _launch(config_path, workdir, stderr_path, limit_bytes=None, **kwargs):
  """The train CLI in a subprocess, its stderr in a file (a pipe nobody reads could fill and block it).

  With `limit_bytes`, no file it writes may grow past that (RLIMIT_FSIZE, set by a small launcher
  that then execs the CLI), and SIGXFSZ is ignored: such a write fails with EFBIG, as on a full disk.
  """
  cli = [sys.executable, "-m", "pretrain.train", f"--config={config_path}", f"--workdir={workdir}"]
  if limit_bytes:
    cli = [
      sys.executable,
      "-c",
      "import os, resource, signal, sys\n"
      "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
      f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
      "os.execv(sys.argv[1], sys.argv[1:])\n",
      *cli,
    ]
  with open(stderr_path, "w", encoding="utf-8") as err:
    return subprocess.Popen(cli, cwd=REPO, stderr=err, text=True, **kwargs)


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return read_rows(workdir) if os.path.exists(path) else []


def _listing(workdir):
  root = os.path.join(workdir, "checkpoints")
  return os.listdir(root) if os.path.isdir(root) else []


def _committed(workdir) -> list[int]:
  return sorted(int(d) for d in _listing(workdir) if d.isdigit())


def _partial(workdir) -> list[str]:
  return sorted(d for d in _listing(workdir) if TMP in d)


def _saved_restarts(workdir, step) -> int:
  """The restart count saved in checkpoint `step`, read as plain JSON (no orbax, which would tidy up)."""
  with open(os.path.join(workdir, "checkpoints", str(step), "progress", "metadata"), "rb") as f:
    return json.load(f)["restarts"]


def _digest(folder) -> dict:
  out = {}
  for d, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(d, name), "rb") as f:
        out[os.path.relpath(os.path.join(d, name), folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _assert_same_params(workdir_a, workdir_b, step):
  step_a, params_a = final_params(workdir_a)
  step_b, params_b = final_params(workdir_b)
  assert step_a == step_b == step
  flat_a, flat_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert len(flat_a) == len(flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(a, b)


def _wait_until(condition, proc, what):
  deadline = time.time() + 300  # Only a guard against a hung child; no assertion is timed.
  while not condition():
    assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {what}"
    assert time.time() < deadline, f"no {what} after 300 s"
    time.sleep(0.002)


def test_ten_kill_nines_resume_to_bit_identical_params(text_corpus, tmp_path):
  """Ten lives killed by SIGKILL, every other one the moment a save is in flight; the eleventh finishes.

  Each life after the first must resume from the newest committed checkpoint with its restart count
  one above that checkpoint's, never from the half-written step a kill left, and the run must end
  bit-identical to one never interrupted.
  """
  # Ten lives reach step ~8 (each kill waits for at most 3 saves); 24 steps leave room for slower ones.
  steps, kill_count = 24, 10
  config_path = _config_file(tmp_path, text_corpus, steps)
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  kills, kills_during_save, lives = 0, 0, []
  first_kill = launched = None
  while True:
    committed = _committed(workdir)
    life = {
      "expect": (committed[-1], _saved_restarts(workdir, committed[-1]) + 1) if committed else None,
      "err": str(tmp_path / f"life{len(lives)}.err"),
      "rows": len(_rows(workdir)),
      "partial": [],
    }
    lives.append(life)
    launched = time.time()
    proc = _launch(config_path, workdir, life["err"], stdout=subprocess.DEVNULL)
    if kills == kill_count:
      assert proc.wait(timeout=600) == 0, open(life["err"], encoding="utf-8").read()[-3000:]
      break
    # This life trains (its compile row and a loss row are written) and a checkpoint is committed.
    _wait_until(
      lambda: len(_rows(workdir)) >= life["rows"] + 2 and _committed(workdir), proc, "training"
    )
    if kills % 2 == 0:  # Kill as the n-th save from now has made its temporary folder.
      seen = set(_partial(workdir))
      for _ in range(rng.randint(1, 3)):
        _wait_until(lambda: set(_partial(workdir)) - seen, proc, "a save")
        seen |= set(_partial(workdir))
    else:
      time.sleep(rng.uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_kill = first_kill or time.time()
    kills += 1
    life["partial"] = _partial(workdir)  # A save the kill cut short leaves its temporary folder.
    kills_during_save += bool(life["partial"])
  assert kills == kill_count
  assert kills_during_save >= 1, "no kill landed during a save"

  rows = _rows(workdir)
  ends = [life["rows"] for life in lives[1:]] + [len(rows)]
  for i, life in enumerate(lives):
    log = open(life["err"], encoding="utf-8").read()
    own = [r for r in rows[life["rows"] : ends[i]] if "restarts" in r]
    if i == 0:
      assert "resumed from" not in log and own and {r["restarts"] for r in own} == {0}
      continue
    assert life["expect"] is not None, "a life started with no checkpoint to resume from"
    newest, restart = life["expect"]
    # The newest committed step, not a later one the kill left half-written, and one restart later.
    assert RESUMED.findall(log) == [(str(newest), str(restart))], log[-3000:]
    assert all(int(p.split(".")[0]) > newest for p in lives[i - 1]["partial"])
    assert own and {r["restarts"] for r in own} == {restart}
  restarts = [life["expect"][1] for life in lives[1:]]
  assert restarts == sorted(restarts) and restarts[0] == 1
  # Nothing healthy was quarantined, and the half-written saves are gone.
  assert not [d for d in _listing(workdir) if not d.isdigit()]

  reference = str(tmp_path / "straight")
  # Saved at the end only: the checkpoint cadence changes no value.
  train(_tiny(text_corpus, steps, steps, 1), reference)
  _assert_same_params(workdir, reference, steps)
  # Losses per step agree too: the last row logged for each step (a killed life may log a step twice).
  by_step_a = {r["step"]: r["loss"] for r in rows if "loss" in r}
  by_step_b = {r["step"]: r["loss"] for r in _rows(reference) if "loss" in r}
  assert by_step_a == by_step_b
  last = [r for r in rows if "goodput" in r][-1]
  assert last["restarts"] == restarts[-1] and 0 < last["goodput"] < 1
  straight = [r for r in _rows(reference) if "goodput" in r][-1]
  assert straight["restarts"] == 0
  # Wall time runs from the first life's start, not this life's: the killed lives count against goodput.
  assert last["wall_seconds"] > launched - first_kill
  print(
    f"faults: {kills} kills, {kills_during_save} during a save (a half-written step left), "
    f"{len(lives) - 1} resumes from the newest committed step, 0 lost"
  )


def test_a_checkpoint_write_that_fails_in_the_background(text_corpus, tmp_path):
  """A file-size limit makes the asynchronous write of step 3 fail (EFBIG), as a full disk would.

  The run stops with one `error:` line naming that step and the cause, exit 2; the committed step 2
  is byte-for-byte as it was, and a run without the limit resumes from it exactly.
  """
  # An uninterrupted run, and a copy of its step 2 as the workdir whose next save will fail.
  reference, workdir = str(tmp_path / "straight"), str(tmp_path / "run")
  train(_tiny(text_corpus, 4, 2, 10), reference)
  shutil.copytree(
    os.path.join(reference, "checkpoints", "2"), os.path.join(workdir, "checkpoints", "2")
  )
  step2 = os.path.join(workdir, "checkpoints", "2")
  before = _digest(step2)
  sizes = [os.path.getsize(os.path.join(step2, f)) for f in before]
  limit = 32 * 1024  # Below the array files of a checkpoint, above what else a run writes.
  assert max(sizes) > limit > os.path.getsize(os.path.join(reference, "metrics.jsonl"))

  err_path = str(tmp_path / "limited.err")
  proc = _launch(
    _config_file(tmp_path, text_corpus, 4, 1, 10),
    workdir,
    err_path,
    limit_bytes=limit,
    stdout=subprocess.PIPE,
  )
  out, _ = proc.communicate(timeout=600)
  err = open(err_path, encoding="utf-8").read()
  assert proc.returncode == 2, err[-3000:]
  assert "resumed from step 2 (restart 1)" in err  # The limit let the run start; the save failed.
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  assert re.match(
    r"error: saving the checkpoint of step 3 in \S+ failed \(.*File too large.*\); "
    r"the earlier checkpoints \(2\) are intact$",
    errors[0],
  ), errors[0]
  assert not out.strip()  # No final metrics row: the run did not end as if it had succeeded.
  # The failed write left only its temporary folder; step 2 is untouched.
  assert _committed(workdir) == [2] and _partial(workdir) == ["3" + TMP]
  assert _digest(step2) == before

  rows_before = len(_rows(workdir))
  train(_tiny(text_corpus, 4, 1, 10), workdir)
  rows = [r for r in _rows(workdir)[rows_before:] if "loss" in r]
  assert [(r["step"], r["restarts"]) for r in rows] == [(3, 1), (4, 1)]
  assert _committed(workdir) == [2, 3, 4] and not _partial(workdir)
  _assert_same_params(workdir, reference, 4)
  print("faults: 1 failed write (EFBIG in the background save of step 3), 0 lost")


def test_sigint_saves_exits_cleanly_and_resumes_exactly(text_corpus, tmp_path):
  """The CLI stopped by SIGINT (Ctrl-C) saves the step it reached and exits 0, as documented for it
  and SIGTERM (tests/test_train.py sends that one); the run resumed from there matches one never
  stopped."""
  sig = signal.SIGINT
  steps = 10_000  # Far more than it will run: the signal ends it.
  workdir = str(tmp_path / "run")
  err_path = str(tmp_path / "signalled.err")
  proc = _launch(
    _config_file(tmp_path, text_corpus, steps, 0), workdir, err_path, stdout=subprocess.PIPE
  )
  _wait_until(lambda: any("loss" in r for r in _rows(workdir)), proc, "a loss row")
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=600)
  err = open(err_path, encoding="utf-8").read()
  assert proc.returncode == 0, err[-3000:]
  stopped = json.loads(out.strip().splitlines()[-1])["step"]
  assert 1 <= stopped < steps
  assert f"{sig.name} received: saved a checkpoint at step {stopped}; exiting." in err
  assert _committed(workdir) == [stopped] and not _partial(workdir)

  resume_to = stopped + 2
  train(_tiny(text_corpus, steps, 0, 3), workdir, stop_at_step=resume_to)
  rows = [r for r in _rows(workdir) if "loss" in r]
  assert rows[-1]["step"] == resume_to and rows[-1]["restarts"] == 1
  reference = str(tmp_path / "straight")
  train(_tiny(text_corpus, steps, 0, 3), reference, stop_at_step=resume_to)
  _assert_same_params(workdir, reference, resume_to)
  by_step = {r["step"]: r["loss"] for r in _rows(reference) if "loss" in r}
  assert {r["step"]: r["loss"] for r in rows} == by_step
  print(f"faults: 1 {sig.name}, 0 lost")
