"""The downstream probe's config: from the pretraining workdir, seeded by the job's seed, and checked."""

import os

import ml_collections
import pytest

from pretrain.ablate import probe
from pretrain.errors import PretrainError

STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_stub.py")


def _sweep(**probe_keys):
  s = ml_collections.ConfigDict()
  s.probe = dict(dict(config=STUB), **probe_keys)
  return s


def test_probe_job_config_starts_from_the_job_and_follows_its_seed():
  sweep = _sweep(overrides=dict(train=dict(steps=7)))
  base = probe.base(sweep)
  config = probe.job_config(sweep, base, "/runs/sweep/mha/seed_2", 2)
  assert config.init_from == "/runs/sweep/mha/seed_2" and config.train.seed == 2
  assert probe.steps(config) == 7 and base.init_from == ""  # The base is left as it was.
  fixed = _sweep(seed_keys=[])
  assert probe.job_config(fixed, probe.base(fixed), "/d", 2).train.seed == 0
  assert probe.workdir("/runs/sweep", "mha", 2) == "/runs/sweep/mha/probe_seed_2"
  assert probe.base(ml_collections.ConfigDict()) is None


def test_probe_steps_left_to_epochs_come_from_the_job_module(monkeypatch):
  """A fine-tuning config with train.steps=0 trains what its epochs give: the job module's job_steps."""
  import pretrain.finetune  # pylint: disable=g-import-not-at-top

  seen = []
  monkeypatch.setattr(pretrain.finetune, "job_steps", lambda config: seen.append(config) or 123)
  config = ml_collections.ConfigDict(dict(init_from="/d", train=dict(steps=0, seed=0)))
  assert probe.steps(config) == 123 and seen == [config]


@pytest.mark.parametrize(
  "keys,match",
  [
    (dict(overrides=dict(train=dict(stepz=1))), "stepz"),
    (dict(seed_keys=["note"]), "probe.seed_keys: 'note'"),
    (dict(tasks=["x"]), "unknown key"),
    (dict(config="configs/finetune/absent.py"), "absent.py"),
  ],
)
def test_bad_probes_are_refused(keys, match):
  with pytest.raises(PretrainError, match=match):
    probe.base(_sweep(**keys))


def test_a_missing_finetune_module_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(probe, "JOB", "pretrain.no_such_module:finetune")
  with pytest.raises(PretrainError, match="the probe needs pretrain.no_such_module:finetune"):
    probe.job_function()
