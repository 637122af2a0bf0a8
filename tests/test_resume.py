"""Resuming a workdir: a config that changes the train state is refused (the checkpoints left as they
are), transient storage errors are retried, broken files still quarantined, and
checkpoint.reset_optimizer switches optimizer mid-run keeping the params."""

import errno
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pretrain import checkpoint as ckpt_lib
from pretrain import sharding
from pretrain.errors import PretrainError
from pretrain.train import train
from pretrain.training import resume as resume_lib
from pretrain.training.step import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def listing(workdir) -> dict:
  """{path: sha256} of every file under the workdir's checkpoints."""
  root = os.path.join(workdir, "checkpoints")
  out = {}
  for dp, _, fs in os.walk(root):
    for f in fs:
      with open(os.path.join(dp, f), "rb") as fh:
        out[os.path.relpath(os.path.join(dp, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def four_steps(c):
  """`c` trains 4 steps with checkpoints at 2 and 4, a metrics row each step, no evals."""
  c.train.update(steps=4, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 2
  return c


@pytest.fixture
def trained(tiny_config, tmp_path):
  """(config, workdir) of a tiny AdamW run of 4 steps with checkpoints at 2 and 4."""
  c = four_steps(tiny_config)
  workdir = str(tmp_path / "run")
  train(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  return c, workdir


def test_optimizer_switch_is_refused_by_the_cli_and_leaves_the_checkpoints(
  trained, text_corpus, tmp_path
):
  _, workdir = trained
  before = listing(workdir)
  config = tmp_path / "tiny.py"
  config.write_text(
    f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import make_tiny_config\n\n\n"
    f"def get_config():\n  c = make_tiny_config({text_corpus!r})\n"
    "  c.train.update(steps=4, log_every=1)\n  c.eval.every_steps = 0\n"
    "  c.checkpoint.every_steps = 2\n  return c\n",
    encoding="utf-8",
  )
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "pretrain.train",
      f"--config={config}",
      f"--workdir={workdir}",
      "--config.optimizer.name=lamb",
      "--config.train.steps=6",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 2, r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  assert "optimizer.name is 'lamb'" in errors[0] and "'adamw'" in errors[0], errors[0]
  assert "reset_optimizer" in errors[0]
  assert "unreadable" not in r.stderr and "corrupt" not in r.stderr
  assert listing(workdir) == before  # Both checkpoints, byte for byte; nothing renamed.


def test_clipping_toggled_is_refused_naming_the_field(trained):
  c, workdir = trained
  before = listing(workdir)
  c.optimizer.grad_clip_norm = 0.0
  c.train.steps = 6
  with pytest.raises(PretrainError, match=r"optimizer\.grad_clip_norm is 0\.0 .* with 1\.0"):
    train(c, workdir)
  assert listing(workdir) == before


def test_a_change_that_keeps_the_state_resumes(trained):
  """Another peak learning rate keeps the optimizer state: no refusal, no reset."""
  c, workdir = trained
  c.optimizer.learning_rate = 5e-4
  c.train.steps = 6
  assert train(c, workdir)["step"] == 6
  rows = train_lib_rows(workdir)
  assert not any("optimizer_reset" in r for r in rows)


def train_lib_rows(workdir):
  import json  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def saved_param_leaf(workdir, step):
  """One param leaf of checkpoint `step`, as numpy, read apart from the train loop."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "checkpoints", str(step), "state")
  state = ocp.PyTreeCheckpointer().restore(path)
  leaves = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  key, leaf = leaves[0]
  return jax.tree_util.keystr(key), np.asarray(leaf)


def test_reset_optimizer_switches_adamw_to_lamb_keeping_params(trained, monkeypatch, caplog):
  import logging  # pylint: disable=g-import-not-at-top

  c, workdir = trained
  key, saved = saved_param_leaf(workdir, 4)
  started = []  # The state the resumed loop starts from.
  real = resume_lib.with_new_optimizer_state

  def spy(*args):
    state = real(*args)
    started.append(jax.tree.map(np.asarray, state))
    return state

  monkeypatch.setattr(resume_lib, "with_new_optimizer_state", spy)
  c.optimizer.name = "lamb"
  c.train.steps = 6
  c.checkpoint.reset_optimizer = True
  with caplog.at_level(logging.INFO, logger="pretrain"):
    out = train(c, workdir)
  assert out["step"] == 6 and len(started) == 1
  first = started[0]
  assert int(first.step) == 4
  leaf = dict(
    (jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_flatten_with_path(first.params)[0]
  )[key]
  np.testing.assert_array_equal(leaf, saved)  # The params are the checkpoint's.
  # A new LAMB state: moments at zero, its schedule counting on from step 4.
  adam = of_type(first.opt_state, optax.ScaleByAdamState)
  assert adam and all(not np.any(m) for a in adam for m in jax.tree.leaves((a.mu, a.nu)))
  assert [int(a.count) for a in adam] == [0]  # Adam's bias correction starts afresh.
  assert [int(s.count) for s in of_type(first.opt_state, optax.ScaleByScheduleState)] == [4]
  assert any("reset_optimizer" in r.getMessage() for r in caplog.records)
  rows = train_lib_rows(workdir)
  resumed = [r for r in rows if r["step"] >= 4 and "compile_seconds" in r]
  assert resumed[-1]["step"] == 4 and resumed[-1]["optimizer_reset"] == 1
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
  assert np.isfinite([r["loss"] for r in rows if "loss" in r]).all()
  # Step 6 holds LAMB's state; the reset applied once: the next life resumes it as it is.
  c.train.steps = 8
  started.clear()
  assert train(c, workdir)["step"] == 8 and not started
  rows = train_lib_rows(workdir)
  assert not any("optimizer_reset" in r for r in rows if r["step"] == 6 and "compile_seconds" in r)


def of_type(tree, cls) -> list:
  """The nodes of `tree` that are `cls` instances."""
  nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls))
  return [x for x in nodes if isinstance(x, cls)]


# --- The Checkpointer's classification, on small trees --------------------------------------------


def _state(tx, value=1.0):
  params = {"w": jnp.full((64,), value), "b": jnp.zeros((4,))}
  return TrainState(step=jnp.array(int(value), jnp.int32), params=params, opt_state=tx.init(params))


def _save(workdir, steps, tx=None):
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5)
  for step in steps:
    c.save(
      step, _state(tx or optax.adamw(1e-3), float(step)), {"next_batch": step}, {}, {"r": step}
    )
  c.close()


def test_a_saved_tree_that_differs_is_a_mismatch_not_corruption(tmp_path):
  """The backstop behind the config checks: the first differing path is named, nothing moved."""
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  before = listing(workdir)
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5)
  with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"step 2 .*opt_state\.\d.*reset_optimizer"):
    c.resume(sharding.abstract(_state(optax.lamb(1e-3))), lambda cfg: None)
  wider = _state(optax.adamw(1e-3))
  wider = wider.replace(params={"w": jnp.zeros((32,)), "b": jnp.zeros((4,))})
  wider = wider.replace(opt_state=optax.adamw(1e-3).init(wider.params))
  with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"opt_state.*\(64,\).*\(32,\)|params\.w"):
    c.resume(sharding.abstract(wider), lambda cfg: None)
  assert c.all_steps() == [1, 2]
  c.close()
  assert listing(workdir) == before


class Flaky:
  """Wraps a Checkpointer's orbax manager: its first `failures` restores raise `error`."""

  def __init__(self, manager, failures, error):
    self.manager, self.failures, self.error, self.calls, self.raised = (
      manager,
      failures,
      error,
      0,
      0,
    )

  def restore(self, *args, **kwargs):
    self.calls += 1
    if self.raised < self.failures:
      self.raised += 1
      raise self.error
    return self.manager.restore(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.manager, name)


@pytest.mark.parametrize(
  "error",
  [
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    OSError(errno.EAGAIN, "Resource temporarily unavailable"),
    TimeoutError("read timed out"),
  ],
  ids=["reset", "eagain", "timeout"],
)
def test_transient_errors_are_retried_with_backoff_and_resume(tmp_path, error):
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  before = listing(workdir)
  sleeps = []
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5, sleep=sleeps.append)
  flaky = Flaky(c._manager, failures=3, error=error)  # pylint: disable=protected-access
  c._manager = flaky  # pylint: disable=protected-access
  r = c.resume(sharding.abstract(_state(optax.adamw(1e-3))), lambda cfg: None)
  assert flaky.raised == 3 and flaky.calls > 3  # The faults fired, then the reads went through.
  assert sleeps == [1.0, 2.0, 4.0]
  assert r.step == 2 and r.data == {"next_batch": 2} and r.progress == {"r": 2}
  np.testing.assert_array_equal(r.state.params["w"], np.full(64, 2.0))
  c._manager = flaky.manager  # pylint: disable=protected-access
  c.close()
  assert listing(workdir) == before


def test_a_persistent_transient_error_is_reported_as_such_and_nothing_moves(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  before = listing(workdir)
  sleeps = []
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5, sleep=sleeps.append)
  flaky = Flaky(c._manager, failures=10**6, error=TimeoutError("GCS read timed out"))  # pylint: disable=protected-access
  c._manager = flaky  # pylint: disable=protected-access
  with pytest.raises(
    ckpt_lib.TransientStorageError, match=r"step 2 .*5 times .*transient.*TimeoutError"
  ) as e:
    c.resume(sharding.abstract(_state(optax.adamw(1e-3))), lambda cfg: None)
  assert "unreadable" not in str(e.value) and "corrupt" not in str(e.value)
  assert flaky.raised == 5 and sleeps == [1.0, 2.0, 4.0, 8.0]
  c._manager = flaky.manager  # pylint: disable=protected-access
  assert c.all_steps() == [1, 2]
  c.close()
  assert listing(workdir) == before


def test_which_errors_count_as_transient():
  from gcsfs.retry import HttpError  # pylint: disable=g-import-not-at-top

  def wrapped(inner):
    try:
      try:
        raise inner
      except Exception as e:  # pylint: disable=broad-except
        raise Exception("Encountered error while reading array index") from e  # As orbax does.
    except Exception as outer:  # pylint: disable=broad-except
      return outer

  transient = [
    HttpError({"code": 503, "message": "Service Unavailable"}),
    HttpError({"code": 429, "message": "Too Many Requests"}),
    ValueError("UNAVAILABLE: Error reading gs://b/x: HTTP response code: 503"),
    ValueError("DEADLINE_EXCEEDED: ..."),
    wrapped(ConnectionResetError(errno.ECONNRESET, "reset")),
    OSError(errno.ETIMEDOUT, "timed out"),
  ]
  broken = [
    HttpError({"code": 403, "message": "Forbidden"}),
    FileNotFoundError("_METADATA"),
    ValueError("NOT_FOUND: Error opening zarr driver"),
    ValueError("Expecting ':' delimiter"),
    OSError(errno.EIO, "Input/output error"),
  ]
  assert [ckpt_lib.is_transient(e) for e in transient] == [True] * len(transient)
  assert [ckpt_lib.is_transient(e) for e in broken] == [False] * len(broken)


def test_truncated_checkpoint_is_still_quarantined_after_a_transient_error(tmp_path):
  """Broken files are moved aside (the previous step used) even when a transient error came first."""
  sys.path.insert(0, TESTS)  # For test_checkpoint's helper.
  from test_checkpoint import _truncate_arrays  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _truncate_arrays(os.path.join(ckpt_dir, "2"))
  one = {k: v for k, v in listing(workdir).items() if k.startswith("1/")}
  sleeps = []
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5, sleep=sleeps.append)
  flaky = Flaky(c._manager, failures=1, error=ConnectionResetError("reset"))  # pylint: disable=protected-access
  c._manager = flaky  # pylint: disable=protected-access
  r = c.resume(sharding.abstract(_state(optax.adamw(1e-3))), lambda cfg: None)
  assert flaky.raised == 1 and sleeps == [1.0]
  assert r.step == 1 and not r.optimizer_reset
  np.testing.assert_array_equal(r.state.params["w"], np.full(64, 1.0))
  moved = [d for d in os.listdir(ckpt_dir) if d.startswith("2.unreadable-")]
  assert len(moved) == 1 and os.listdir(os.path.join(ckpt_dir, moved[0]))  # Moved, not deleted.
  assert {k: v for k, v in listing(workdir).items() if k.startswith("1/")} == one
  c._manager = flaky.manager  # pylint: disable=protected-access
  c.close()


def test_reset_reads_only_step_and_params(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, (3,))
  c = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=5)
  r = c.resume(sharding.abstract(_state(optax.lamb(1e-3))), lambda cfg: None, reset_optimizer=True)
  assert r.optimizer_reset and sorted(r.state) == ["params", "step"] and int(r.state["step"]) == 3
  np.testing.assert_array_equal(r.state["params"]["w"], np.full(64, 3.0))
  assert r.data == {"next_batch": 3} and r.progress == {"r": 3}
  c.close()
