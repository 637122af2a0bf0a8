"""A gs:// workdir, against a fake GCS that lives in a local folder (tests/fake_gcs.py).

epath goes through the fake's fsspec "gs" file system and orbax's array data
through tensorstore's GCS driver, pointed at the fake's JSON API server; both
read and write the same local folder `<tmp>/<bucket>/<object name>`.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(
  0, os.path.dirname(os.path.abspath(__file__))
)  # For fake_gcs and test_checkpoint's helpers.
from fake_gcs import BUCKET, root_fixture, server_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_checkpoint import _save_steps, _truncate_arrays  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import check_init_from, final_params  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ablate"))
from tiny_sweep import tiny_sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

_fake_gcs_server = server_fixture()
fake_gcs = root_fixture(server="_fake_gcs_server")


def _objects(folder):
  return sorted(
    os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
  )


def test_fake_gcs_is_what_epath_uses(fake_gcs):
  from etils import epath  # pylint: disable=g-import-not-at-top

  p = epath.Path(f"gs://{BUCKET}/run/a.txt")
  p.parent.mkdir(parents=True, exist_ok=True)
  assert not p.parent.exists()  # GCS has no empty folders.
  p.write_text("x")
  assert (fake_gcs / BUCKET / "run" / "a.txt").read_text() == "x"
  with pytest.raises(NotImplementedError):
    p.open("a")


def test_metrics_rewrite_the_object_and_keep_earlier_lives(fake_gcs, monkeypatch, tmp_path):
  from pretrain.metrics import MetricsWriter  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  workdir = f"gs://{BUCKET}/run"
  jsonl = fake_gcs / BUCKET / "run" / "metrics.jsonl"
  w = MetricsWriter(workdir, remote_sync_seconds=3600)
  w.write(1, {"loss": 2.0})
  assert jsonl.exists()  # The first row goes up at once.
  w.write(2, {"loss": 1.5, "bad": float("nan")})
  assert (
    len(jsonl.read_text().splitlines()) == 1
  )  # The next ones wait for the sync interval or close.
  w.close()
  w = MetricsWriter(workdir, remote_sync_seconds=0)  # A restarted run.
  w.write(3, {"loss": 1.0})
  assert [json.loads(l)["step"] for l in jsonl.read_text().splitlines()] == [1, 2, 3]
  w.close()
  rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
  assert rows[1] == {"step": 2, "loss": 1.5, "bad": "nan"}
  events = os.listdir(fake_gcs / BUCKET / "run" / "tensorboard")
  assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)
  assert not os.path.exists(
    tmp_path / "gs:"
  )  # Nothing was written to a local folder named after the URL.


def test_checkpoints_on_gcs_keep_the_last_and_restore(fake_gcs, _fake_gcs_server):
  from pretrain import sharding  # pylint: disable=g-import-not-at-top
  from pretrain.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  c = Checkpointer(f"gs://{BUCKET}/run", every_steps=1, keep=2)
  assert c.directory == f"gs://{BUCKET}/run/checkpoints"
  for step in (1, 2, 3):
    c.save(step, {"w": jnp.full((4,), float(step))}, {"next_batch": step}, {"step": step})
  c.close()
  ckpt_dir = fake_gcs / BUCKET / "run" / "checkpoints"
  assert sorted(os.listdir(ckpt_dir)) == ["2", "3"]  # Step 1 deleted, object by object.
  assert "state/manifest.ocdbt" in _objects(ckpt_dir / "3")
  assert (
    _fake_gcs_server.requests["upload"] > 0
  )  # The arrays went through tensorstore's GCS driver.
  assert _fake_gcs_server.requests["not faked"] == 0
  c = Checkpointer(f"gs://{BUCKET}/run", every_steps=1, keep=2)
  assert c.all_steps() == [2, 3]
  state, data, _ = c.restore(3, sharding.abstract({"w": jnp.zeros(4)}))
  np.testing.assert_array_equal(state["w"], np.full(4, 3.0))
  assert data == {"next_batch": 3} and c.restore_config(3) == {"step": 3}
  c.close()
  # On GCS a step folder is written in place, complete once its commit marker is: one killed before
  # that is no checkpoint, and the run resumes from the step before.
  (ckpt_dir / "3" / "commit_success.txt").unlink()
  c = Checkpointer(f"gs://{BUCKET}/run", every_steps=1, keep=2)
  assert c.all_steps() == [2] and c.latest_step() == 2
  c.close()


def test_unreadable_checkpoint_on_gcs_is_moved_aside(fake_gcs):
  from pretrain import sharding  # pylint: disable=g-import-not-at-top
  from pretrain.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  workdir = f"gs://{BUCKET}/run"
  _save_steps(workdir, (1, 2))
  ckpt_dir = fake_gcs / BUCKET / "run" / "checkpoints"
  _truncate_arrays(str(ckpt_dir / "2"))
  c = Checkpointer(workdir, every_steps=1, keep=5)
  step, state, data, _ = c.restore_newest_readable(
    sharding.abstract({"w": jnp.zeros(64)}), lambda _: None
  )
  assert step == 1 and data == {"next_batch": 1}
  np.testing.assert_array_equal(state["w"], np.full(64, 1.0))
  moved = [d for d in os.listdir(ckpt_dir) if d.startswith("2.unreadable-")]
  assert len(moved) == 1 and "2" not in os.listdir(ckpt_dir) and c.all_steps() == [1]
  assert _objects(ckpt_dir / moved[0])  # Moved, not deleted.
  c.close()


def test_train_and_resume_in_a_gcs_workdir(
  tiny_config, fake_gcs, _fake_gcs_server, monkeypatch, tmp_path
):
  from pretrain.train import train  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  workdir = f"gs://{BUCKET}/run"
  run = fake_gcs / BUCKET / "run"
  c = tiny_config  # 6 steps, a checkpoint every 3.
  c.eval.every_steps = 0  # Its compile is time this test does not need.
  train(c, workdir, stop_at_step=3)
  assert sorted(os.listdir(run / "checkpoints")) == ["3"]
  assert (
    _fake_gcs_server.requests["upload"] > 0
  )  # The arrays went through tensorstore's GCS driver.
  start = json.loads((run / "run_start.json").read_text())["first_start_time"]
  first_life = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in first_life if "loss" in r] == [2, 3]

  last = train(c, workdir)
  assert last["step"] == 6
  assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert rows[: len(first_life)] == first_life  # The rewritten object kept the first life's rows.
  assert [r["step"] for r in rows if "num_params" in r] == [0, 3]  # Each life's header row.
  assert [r["step"] for r in rows if "loss" in r] == [2, 3, 4, 6]
  assert [r["restarts"] for r in rows if "loss" in r] == [0, 0, 1, 1]
  assert json.loads((run / "run_start.json").read_text())["first_start_time"] == start
  assert len(os.listdir(run / "tensorboard")) == 2  # One event file per life.
  assert not os.path.exists(tmp_path / "gs:")
  assert _fake_gcs_server.requests["not faked"] == 0
  # Resuming through GCS loses nothing: the same parameters as a local run without a stop.
  train(c, str(tmp_path / "local"))
  step, params = final_params(workdir)
  local_step, local_params = final_params(str(tmp_path / "local"))
  assert step == local_step == 6
  jax.tree.map(np.testing.assert_array_equal, params, local_params)


def test_ablation_report_in_a_gcs_workdir(fake_gcs, text_corpus, monkeypatch, tmp_path):
  from pretrain import ablate  # pylint: disable=g-import-not-at-top
  from pretrain.ablate import runner  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  sweep = tiny_sweep(text_corpus, {"h2": {}, "h4": {"model": {"num_heads": 4}}})
  runner.prepare(sweep, f"gs://{BUCKET}/sweep")  # The manifest, as the sweep's first run writes it.
  assert json.loads((fake_gcs / BUCKET / "sweep" / "sweep.json").read_text())["seeds"] == 1
  job = fake_gcs / BUCKET / "sweep" / "h2" / "seed_0"
  job.mkdir(parents=True)
  (job / ablate.RESULT).write_text(json.dumps({"status": "done", "steps": 4, "error": ""}))
  rows = [
    {"step": 0, "num_params": 1000, "compile_seconds": 1.0, "tokens_per_step": 256},
    {"step": 2, "loss": 3.0, "tokens_per_sec": 10.0},
    {"step": 4, "loss": 2.5, "tokens_per_sec": 12.0},
    {"step": 4, "eval_loss": 2.6},
  ]
  (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = ablate.run_sweep(sweep, f"gs://{BUCKET}/sweep", report_only=True, log=lambda s: None)
  assert {r["variant"]: r["status"] for r in out} == {"h2": "done", "h4": "not run"}
  assert out[0]["eval_loss"] == 2.6 and out[0]["final_train_loss"] == 2.5
  report = (fake_gcs / BUCKET / "sweep" / "report.md").read_text()
  assert "| h2 | 1 | 2.6000 | - | - | - | baseline |" in report
  assert "| h2 | 1,000 | 4 | 1,024 |" in report and "no test is possible" in report
  assert (fake_gcs / BUCKET / "sweep" / "results.csv").read_text().startswith("variant,seed,")
  assert (fake_gcs / BUCKET / "sweep" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
  assert not os.path.exists(tmp_path / "gs:")


def test_init_from_a_gcs_workdir_starts_from_its_params(
  tiny_config, fake_gcs, _fake_gcs_server, monkeypatch, tmp_path
):
  from pretrain import convert  # pylint: disable=g-import-not-at-top
  from pretrain.errors import PretrainError  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  source = f"gs://{BUCKET}/source"
  params = check_init_from(tiny_config, source, str(tmp_path / "continued"))
  jax.tree.map(np.testing.assert_array_equal, convert.load_params(source), params)
  with pytest.raises(
    PretrainError, match="only local output folders"
  ):  # to-hf writes only locally.
    convert.to_hf(source, f"gs://{BUCKET}/hf")
  assert _fake_gcs_server.requests["not faked"] == 0
  # On GCS a step folder is written in place: one whose commit marker is missing is no checkpoint.
  (fake_gcs / BUCKET / "source" / "checkpoints" / "2" / "commit_success.txt").unlink()
  with pytest.raises(PretrainError, match="holds no checkpoint"):
    convert.load_params(source)
  with pytest.raises(PretrainError, match="save did not complete"):
    convert.load_params(f"{source}/checkpoints/2")
  assert not os.path.exists(tmp_path / "gs:")


def test_a_converted_folder_in_gcs_reads_as_the_local_one(
  fake_gcs, _fake_gcs_server, monkeypatch, tmp_path
):
  import shutil  # pylint: disable=g-import-not-at-top
  from pretrain import convert  # pylint: disable=g-import-not-at-top
  from pretrain.convert import checkpoints  # pylint: disable=g-import-not-at-top
  from pretrain.data.tokenizer_files import open_tokenizer  # pylint: disable=g-import-not-at-top
  from pretrain.errors import PretrainError  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  rng = np.random.default_rng(0)
  params = {
    "embed": {"embedding": rng.normal(size=(8, 4)).astype(np.float32)},
    "layer_0": {
      "kernel": rng.normal(size=(4, 4)).astype(np.float32),
      "bias": np.zeros(4, np.float32),
    },
  }
  config = {
    "task": {"name": "bert"},
    "model": {"hidden_size": 4},
    "tokenizer": {"path": "vocab.txt"},
  }
  local = tmp_path / "converted"
  local.mkdir()
  checkpoints.save_converted(str(local), params, config, {"family": "bert", "hf_dir": "/hf"})
  (local / "vocab.txt").write_text("[PAD]\n")
  shutil.copytree(local, fake_gcs / BUCKET / "models" / "converted")
  remote = f"gs://{BUCKET}/models/converted/"  # A trailing slash is the same folder.
  for got, want in (
    (convert.load_params(remote), params),
    (convert.load_params(remote), convert.load_params(str(local))),
  ):
    assert checkpoints.flatten(got).keys() == checkpoints.flatten(want).keys()
    jax.tree.map(np.testing.assert_array_equal, got, want)
  # Read straight into a target's shardings (tensorstore's GCS driver).
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params)
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(convert.load_params(remote, target)), params
  )
  assert _fake_gcs_server.requests["read"] > 0 and _fake_gcs_server.requests["not faked"] == 0

  remote_cfg, local_cfg = convert.load_config(remote), convert.load_config(str(local))
  assert local_cfg.tokenizer.path == str(local / "vocab.txt")
  assert (
    remote_cfg.tokenizer.path == f"gs://{BUCKET}/models/converted/vocab.txt"
  )  # Not opened: tokenizers are local.
  remote_cfg.tokenizer.path = local_cfg.tokenizer.path
  assert remote_cfg.to_dict() == local_cfg.to_dict()
  with pytest.raises(PretrainError, match="is a URL: tokenizer files must be local"):
    open_tokenizer(f"gs://{BUCKET}/models/converted/vocab.txt")

  with pytest.raises(PretrainError, match="takes no step"):
    convert.load_params(remote, step=1)
  with pytest.raises(PretrainError, match="is not a directory"):
    convert.load_params(f"gs://{BUCKET}/models/nothing")
  (fake_gcs / BUCKET / "models" / "converted" / "convert.json").unlink()
  with pytest.raises(
    PretrainError, match=r"converted model source: gs://.*/convert.json does not exist"
  ):
    convert.load_params(remote)
  with pytest.raises(PretrainError, match="only local output folders"):
    convert.from_hf(str(tmp_path / "hf"), f"gs://{BUCKET}/out")
  assert not os.path.exists(tmp_path / "gs:")
