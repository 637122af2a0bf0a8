"""End to end: the train loop on a tiny model — loss falls, resume is bit-exact, bad input is refused."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from pretrain import checkpoint as ckpt_lib
from pretrain.errors import PretrainError
from pretrain.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def without_evals(c, steps, checkpoint_every=None):
  """Has config `c` train `steps` steps, a metrics row each and no evals; a checkpoint every `checkpoint_every`."""
  c.train.update(steps=steps, log_every=1)
  c.eval.every_steps = 0
  if checkpoint_every is not None:
    c.checkpoint.every_steps = checkpoint_every
  return c


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def train_rows(workdir):
  return [r for r in read_rows(workdir) if "loss" in r]


def final_params(workdir):
  """The latest checkpoint's state as numpy arrays (restored without a target)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.join(workdir, "checkpoints")
  mngr = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, jax.tree.map(np.asarray, restored["state"])


def test_tiny_run_learns_and_writes_everything(tiny_config, tmp_path):
  c = tiny_config
  c.train.update(steps=40, log_every=5)
  c.eval.update(every_steps=20)
  c.checkpoint.update(every_steps=20)
  workdir = str(tmp_path / "run")
  last = train(c, workdir)
  rows = train_rows(workdir)
  assert [r["step"] for r in rows] == list(range(5, 41, 5))
  required = {
    "step",
    "loss",
    "mlm_loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "learning_rate",
    "tokens_per_sec",
    "mfu",
    "data_wait_fraction",
  }
  assert required <= set(rows[0])
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
  assert 0 < rows[0]["tokens_per_sec"] and 0 < rows[0]["mfu"] < 1
  assert 0 <= rows[0]["data_wait_fraction"] <= 1
  evals = [r for r in read_rows(workdir) if "eval_loss" in r]
  assert [r["step"] for r in evals] == [20, 40]
  assert {"eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"} <= set(evals[0])
  assert evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"] + 0.5
  assert last["step"] == 40
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
  assert any(
    f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard"))
  )
  # The same command again finds the run complete and changes nothing.
  mtime = os.path.getmtime(os.path.join(workdir, "checkpoints", "40"))
  train(c, workdir)
  assert len(train_rows(workdir)) == len(rows)
  assert os.path.getmtime(os.path.join(workdir, "checkpoints", "40")) == mtime


def test_resume_is_bit_exact(tiny_config, tmp_path):
  c = tiny_config
  c.train.update(steps=6, log_every=1)
  c.checkpoint.update(every_steps=3)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train(c, straight)
  out = train(c, resumed, stop_at_step=3)
  assert out["step"] == 3
  assert final_params(resumed)[0] == 3
  train(c, resumed)
  loss_a = [(r["step"], r["loss"], r["grad_norm"]) for r in train_rows(straight)]
  loss_b = [(r["step"], r["loss"], r["grad_norm"]) for r in train_rows(resumed)]
  assert loss_a == loss_b  # Exact float equality, every step.
  step_a, state_a = final_params(straight)
  step_b, state_b = final_params(resumed)
  assert step_a == step_b == 6
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_matches_full_batch(tiny_config, tmp_path):
  c = tiny_config
  c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  without_evals(c, steps=1)
  full = train(c, str(tmp_path / "full"))
  c.train.grad_accum_steps = 2
  accum = train(c, str(tmp_path / "accum"))
  for k in ("loss", "mlm_accuracy", "nsp_accuracy", "grad_norm"):
    np.testing.assert_allclose(accum[k], full[k], rtol=1e-5, err_msg=k)


def test_restore_onto_a_different_mesh(tiny_config, tmp_path):
  c = tiny_config
  c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  without_evals(c, steps=4, checkpoint_every=2)
  straight, moved = str(tmp_path / "straight"), str(tmp_path / "moved")
  train(c, straight)
  train(c, moved, stop_at_step=2)
  c.mesh.update(data=2, fsdp=2, tensor=2)
  train(c, moved)
  a, b = train_rows(straight), train_rows(moved)
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)


def test_sigterm_saves_and_exits_cleanly(tiny_config, tmp_path):
  c = tiny_config
  without_evals(c, steps=10_000, checkpoint_every=0)
  workdir = str(tmp_path / "run")

  def send_sigterm_after_first_row():
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:
      if os.path.exists(path) and any("loss" in line for line in open(path, encoding="utf-8")):
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)

  threading.Thread(target=send_sigterm_after_first_row, daemon=True).start()
  out = train(c, workdir)
  assert 1 <= out["step"] < 10_000
  step, _ = final_params(workdir)
  assert step == out["step"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
  c = tiny_config
  c.optimizer.update(learning_rate=1e30, warmup_steps=0, grad_clip_norm=0.0, decay="constant")
  without_evals(c, steps=20, checkpoint_every=1)
  c.checkpoint.async_save = False
  workdir = str(tmp_path / "run")
  with pytest.raises(PretrainError, match=r"loss is nan at step (\d+)") as info:
    train(c, workdir)
  bad_step = int(info.value.args[0].split("at step ")[1].split(";")[0])
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and max(steps) == bad_step - 1
  assert f"last good checkpoint is step {bad_step - 1}" in str(info.value)


def _poison_steps(monkeypatch, poisoned_task, steps):
  """Gives the steps in `steps` (1-based) non-finite gradients and a finite loss."""
  from pretrain import families  # pylint: disable=g-import-not-at-top
  from pretrain.data import pipeline  # pylint: disable=g-import-not-at-top

  mark = 511  # The tiny config's last token id; its batches start with [CLS].
  get_task, next_batch = families.get_task, pipeline.BatchStream.__next__
  monkeypatch.setattr(families, "get_task", lambda *a: poisoned_task(get_task(*a), mark))
  calls = []

  def marked(self):
    batch = next_batch(self)
    calls.append(1)
    if len(calls) in steps:
      batch = dict(batch, input_ids=batch["input_ids"].copy())
      batch["input_ids"][0, 0] = mark
    return batch

  monkeypatch.setattr(pipeline.BatchStream, "__next__", marked)


def test_nonfinite_gradients_are_skipped_then_stop_the_run(
  tiny_config, tmp_path, monkeypatch, poisoned_task
):
  c = without_evals(tiny_config, steps=20, checkpoint_every=2)
  c.checkpoint.async_save = False
  c.train.max_skipped_steps = 2
  _poison_steps(monkeypatch, poisoned_task, {3, 5, 6, 7})
  workdir = str(tmp_path / "run")
  with pytest.raises(PretrainError) as info:
    train(c, workdir)
  assert str(info.value).startswith("gradients are not finite (grad_norm ")
  assert (
    "at step 7; steps 5..7 were all skipped, more than train.max_skipped_steps=2; stopping. "
    "The last good checkpoint is step 6 (nothing was saved after step 6)."
  ) in str(info.value)
  rows = {r["step"]: r for r in train_rows(workdir)}
  assert sorted(rows) == [1, 2, 3, 4, 5, 6]
  assert [rows[s]["skipped_steps"] for s in sorted(rows)] == [0, 0, 1, 0, 1, 1]
  # The fault happened: a skipped step's loss is finite and its gradients are not.
  assert np.isfinite(rows[3]["loss"]) and rows[3]["grad_norm"] in ("inf", "nan")
  assert np.isfinite(rows[4]["grad_norm"])
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [2, 4, 6]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  mngr = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"), item_names=("state", "data", "config")
  )
  read = lambda s: mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  saved = {s: jax.tree.map(np.asarray, read(s)["state"]["params"]) for s in (4, 6)}
  mngr.close()
  # Steps 5 and 6 were skipped: checkpoint 6 holds step 4's params, intact.
  for a, b in zip(jax.tree.leaves(saved[6]), jax.tree.leaves(saved[4])):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_gradients_stop_at_the_first_by_default(
  tiny_config, tmp_path, monkeypatch, poisoned_task
):
  c = without_evals(tiny_config, steps=20, checkpoint_every=1)
  c.checkpoint.async_save = False
  _poison_steps(monkeypatch, poisoned_task, {3})
  workdir = str(tmp_path / "run")
  with pytest.raises(
    PretrainError,
    match=r"^gradients are not finite \(grad_norm (inf|nan), loss [0-9.]+\) at step 3;",
  ) as info:
    train(c, workdir)
  assert "The last good checkpoint is step 2" in str(info.value)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [1, 2]


def test_mesh_that_does_not_fit_the_devices(tiny_config, tmp_path):
  tiny_config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(PretrainError, match="8"):
    train(tiny_config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_missing_corpus(tiny_config, tmp_path):
  tiny_config.data.paths = str(tmp_path / "nothing-here-*.txt")
  with pytest.raises(PretrainError, match="nothing-here"):
    train(tiny_config, str(tmp_path / "run"))


def test_tokenizer_that_differs_from_the_checkpoint(tiny_config, tmp_path):
  c = tiny_config
  without_evals(c, steps=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  train(c, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints", "2")
  before = {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)}
  c.tokenizer.vocab_size = 384
  c.train.steps = 4
  with pytest.raises(PretrainError, match="tokenizer"):
    train(c, workdir)
  assert {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)} == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def _cli(args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run(
    [sys.executable, "-m", "pretrain.train", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_rejects_unknown_key_and_bad_type(tmp_path):
  workdir = str(tmp_path / "run")
  r = _cli(["--config=configs/bert_tiny.py", f"--workdir={workdir}", "--config.train.stepz=5"])
  assert r.returncode != 0 and "stepz" in r.stderr
  r = _cli(["--config=configs/bert_tiny.py", f"--workdir={workdir}", "--config.train.steps=many"])
  assert r.returncode != 0 and "many" in r.stderr
  assert not os.path.exists(workdir)


def test_cli_trains_resumes_and_keeps_library_logs_quiet(text_corpus, tmp_path):
  workdir = str(tmp_path / "run")
  args = [
    "--config=configs/bert_tiny.py",
    f"--workdir={workdir}",
    "--config.data.source=text",
    f"--config.data.paths={text_corpus}",
    "--config.tokenizer.vocab_size=512",
    "--config.model.hidden_size=32",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.intermediate_size=64",
    "--config.data.max_seq_length=32",
    "--config.data.max_predictions_per_seq=5",
    "--config.train.steps=4",
    "--config.train.batch_size=8",
    "--config.train.log_every=2",
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=2",
    "--config.metrics.progress_bar=False",
  ]
  r = _cli(args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
  assert [row["step"] for row in train_rows(workdir)] == [2, 4]
  assert "CheckpointManager" not in r.stderr and "async_checkpointer" not in r.stderr, r.stderr[
    -2000:
  ]
  r = _cli(args[:-5] + ["--config.train.steps=6", *args[-4:]])  # Same run, extended: resumes at 4.
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resumed from step 4" in r.stderr
  assert [row["step"] for row in train_rows(workdir)] == [2, 4, 6]


def test_cli_missing_corpus_is_one_clear_error(tmp_path):
  workdir = str(tmp_path / "run")
  r = _cli(
    [
      "--config=configs/bert_tiny.py",
      f"--workdir={workdir}",
      "--config.data.source=text",
      f"--config.data.paths={tmp_path}/absent/*.txt",
    ]
  )
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error:") and "absent" in r.stderr
  assert not os.path.exists(workdir)


def test_checkpoints_survive_a_failed_rerun(tiny_config, tmp_path):
  """A rerun that fails (bad mesh) after a good run leaves every checkpoint as it was."""
  c = tiny_config
  without_evals(c, steps=3)
  workdir = str(tmp_path / "run")
  train(c, workdir)

  def files():
    root = os.path.join(workdir, "checkpoints")
    return {
      os.path.join(dp, f): os.path.getmtime(os.path.join(dp, f))
      for dp, _, fs in os.walk(root)
      for f in fs
    }

  snapshot = files()
  c.mesh.update(data=5)
  with pytest.raises(PretrainError):
    train(c, workdir)
  assert files() == snapshot
  assert ckpt_lib.Checkpointer(workdir, 1, 1).latest_step() == 3


def check_init_from(c, source: str, continued: str) -> dict:
  """Trains `source`, then `continued` from it at learning rate 0: both end with the same params (returned)."""
  without_evals(c, steps=2)
  train(c, source)
  c.init_from = source
  c.optimizer.update(learning_rate=0.0, warmup_steps=0)  # No update: the params stay the source's.
  train(c, continued)
  _, a = final_params(source)
  _, b = final_params(continued)
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  return a["params"]


def test_init_from_another_run_starts_from_its_params(tiny_config, tmp_path):
  c = tiny_config
  check_init_from(c, str(tmp_path / "source"), str(tmp_path / "continued"))
  c.model.intermediate_size *= 2
  with pytest.raises(PretrainError, match="intermediate"):
    train(c, str(tmp_path / "other_shape"))
