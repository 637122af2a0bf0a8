"""Training in phases (pretrain/training/phases.py): the switch at the configured step to the longer
examples of a new stream, a stop at or after the boundary that resumes bit-exactly, the data checks on
resume, the phases' validation and BERT's two-phase configs."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from pretrain import checkpoint as ckpt_lib
from pretrain import sample
from pretrain import sharding
from pretrain.ablate import load_config_file
from pretrain.errors import PretrainError
from pretrain.train import train
from pretrain.training import phases

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def phased(c):
  """The tiny config in two phases: steps 1-4 at 32 tokens (5 predictions), 5-6 at 64 (10)."""
  c.train.update(steps=6, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.update(every_steps=0, async_save=False)
  c.train.phases = ml_collections.ConfigDict(
    {
      "short": dict(start_step=0, data=dict(max_seq_length=32, max_predictions_per_seq=5)),
      "long": dict(start_step=4, data=dict(max_seq_length=64, max_predictions_per_seq=10)),
    }
  )
  return c


def recording(seen: list):
  """sharding.make_global_batch, keeping a copy of every host batch in `seen`, in order."""
  make = sharding.make_global_batch

  def spy(batch, mesh):
    seen.append({k: np.array(v) for k, v in batch.items()})
    return make(batch, mesh)

  return spy


@pytest.fixture
def batches(monkeypatch):
  """The host batches every train step of the test reads, in order."""
  seen = []
  monkeypatch.setattr(sharding, "make_global_batch", recording(seen))
  return seen


def saved(workdir, step):
  """(config, data position) of a checkpoint."""
  ckpt = ckpt_lib.Checkpointer(workdir, every_steps=0, keep=5)
  try:
    config = ckpt.restore_config(step)
  finally:
    ckpt.close()
  with open(os.path.join(workdir, "checkpoints", str(step), "data", "metadata")) as f:
    return config, json.load(f)


def consumed(data) -> int:
  return data["example_offset"] + data["next_batch"] * data["global_batch_size"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, text_corpus, tiny_config_factory):
  """(workdir, host batches of each step) of the phased run trained in one call."""
  workdir = str(tmp_path_factory.mktemp("phases") / "run")
  seen = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sharding, "make_global_batch", recording(seen))
    row = train(phased(tiny_config_factory(text_corpus)), workdir)
  assert row["step"] == 6
  return workdir, seen


def test_the_switch_happens_at_the_configured_step_with_longer_examples(uninterrupted):
  workdir, seen = uninterrupted
  assert [b["input_ids"].shape for b in seen] == [(16, 32)] * 4 + [(16, 64)] * 2
  assert [b["masked_lm_positions"].shape for b in seen] == [(16, 5)] * 4 + [(16, 10)] * 2
  boundary, boundary_data = saved(workdir, 4)
  end, end_data = saved(workdir, 6)
  assert (boundary["train"]["phase"], end["train"]["phase"]) == ("short", "long")
  assert (boundary["data"]["max_seq_length"], end["data"]["max_seq_length"]) == (32, 64)
  assert consumed(boundary_data) == 4 * 16
  assert consumed(end_data) == 2 * 16  # The second phase's own stream, from example 0.
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert sorted(set(steps)) == [0, 1, 2, 3, 4, 5, 6]


def test_a_stop_mid_phase_2_resumes_bit_exactly(uninterrupted, tiny_config, tmp_path, batches):
  workdir_a, seen_a = uninterrupted
  workdir = str(tmp_path / "run")
  c = phased(tiny_config)
  # Phase 1, its checkpoint at the boundary, phase 2 resuming it, stopped (as by a kill) mid-phase.
  assert train(c, workdir, stop_at_step=5)["step"] == 5
  assert len(batches) == 5 and sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
    "4",
    "5",
  ]
  assert train(c, workdir)["step"] == 6
  assert len(batches) == len(seen_a) == 6
  for a, b in zip(seen_a, batches):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  params_a, params_b = sample.load_run(workdir_a)[3], sample.load_run(workdir)[3]
  assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
  assert all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b))
  )


def test_a_changed_data_key_on_resume_is_refused(uninterrupted, tiny_config, tmp_path):
  workdir, _ = uninterrupted
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  c = phased(tiny_config)
  c.data.seed = 1
  with pytest.raises(
    PretrainError, match=r"config data\.seed is 1 but the checkpoint was trained with 0"
  ):
    train(c, workdir)
  c = phased(tiny_config)
  c.train.phases.long.data.max_seq_length = 48  # Within the checkpoint's phase: not a phase change.
  with pytest.raises(
    PretrainError, match=r"data\.max_seq_length is 48 but the checkpoint .* with 64"
  ):
    train(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda p: p.short.update(start_step=1), "one must start at 0"),
    (
      lambda p: p.long.update(start_step=6),
      r"start_step=6 must be an integer in \[0, train.steps=6\)",
    ),
    (lambda p: p.long.update(start_step=0), "both start at 0"),
    (
      lambda p: p.long.data.update(max_seq_len=8),
      "train.phases.long.data.max_seq_len is not a key",
    ),
    (lambda p: p.long.update(train=dict(steps=3)), "a phase may set only train.batch_size"),
  ],
)
def test_phases_that_cannot_run_are_refused(tiny_config, edit, message):
  c = phased(tiny_config)
  edit(c.train.phases)
  with pytest.raises(PretrainError, match=message):
    phases.phases_of(c)


@pytest.mark.parametrize("name", ["bert_base", "bert_large"])
def test_bert_configs_run_the_papers_two_phases(name):
  c = load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
  c.lock()
  got = [(p.name, p.start_step, p.end_step, p.data) for p in phases.phases_of(c)]
  assert got == [
    ("seq128", 0, 900_000, {"max_seq_length": 128, "max_predictions_per_seq": 20}),
    ("seq512", 900_000, 1_000_000, {"max_seq_length": 512, "max_predictions_per_seq": 80}),
  ]
  assert c.train.batch_size == 256 and c.model.max_position_embeddings == 512
  c.train.steps = 1000  # As --config.train.steps=1000 would: the boundary follows.
  assert [p.start_step for p in phases.phases_of(c.copy_and_resolve_references())] == [0, 900]
