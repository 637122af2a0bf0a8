"""The sweep manifest: written at the first run, extended by new variants, and a different sweep refused."""

import json
import os

import pytest

from pretrain.ablate import manifest
from pretrain.errors import PretrainError


def _manifest(**changes):
  m = {
    "base_config": {"train": {"steps": 4, "batch_size": 8}},
    "budget": {"kind": "tokens", "value": None},
    "seeds": 2,
    "seed_keys": ["train.seed", "data.seed"],
    "probe": None,
    "variants": {"a": {"model": {"heads": 2}}},
    "plans": {"a": {"steps": 4, "warmup_steps": 2, "tokens_per_step": 256, "flops_per_step": 1e6}},
  }
  m.update(changes)
  return m


def test_first_run_writes_and_new_variants_join(tmp_path):
  workdir = str(tmp_path / "sweep")
  manifest.write(workdir, manifest.checked(workdir, _manifest()))
  assert manifest.read(workdir) == _manifest()
  wider = _manifest(
    variants={"a": {"model": {"heads": 2}}, "b": {"model": {"heads": 4}}},
    plans=dict(_manifest()["plans"], b=_manifest()["plans"]["a"]),
  )
  merged = manifest.checked(workdir, wider)
  assert set(merged["variants"]) == {"a", "b"} and set(merged["plans"]) == {"a", "b"}
  # A sweep naming only some of the recorded variants still fits; the record keeps them all.
  assert set(manifest.checked(workdir, _manifest())["variants"]) == {"a"}


@pytest.mark.parametrize(
  "changes,match",
  [
    (dict(seeds=3), r"another number of seeds \(2 in the directory, 3 now\)"),
    (
      dict(budget={"kind": "flops", "value": 1e9}),
      "another budget .kind: 'tokens' in the directory, 'flops' now",
    ),
    (
      dict(base_config={"train": {"steps": 8, "batch_size": 8}}),
      "another base config .train.steps: 4",
    ),
    (dict(seed_keys=["train.seed"]), "another set of seed keys"),
    (dict(probe={"config": "x"}), "another probe"),
    (dict(variants={"a": {"model": {"heads": 4}}}), "another config for variant a .model.heads: 2"),
  ],
)
def test_a_different_sweep_is_refused_and_nothing_changes(tmp_path, changes, match):
  workdir = str(tmp_path / "sweep")
  manifest.write(workdir, _manifest())
  before = open(os.path.join(workdir, manifest.MANIFEST), encoding="utf-8").read()
  with pytest.raises(PretrainError, match=match):
    manifest.checked(workdir, _manifest(**changes))
  assert open(os.path.join(workdir, manifest.MANIFEST), encoding="utf-8").read() == before


def test_jobs_without_a_manifest_are_refused(tmp_path):
  old = (
    tmp_path / "sweep" / "mha"
  )  # The layout of the runner before seeds: DIR/<variant>/result.json.
  old.mkdir(parents=True)
  (old / "result.json").write_text(json.dumps({"status": "done"}))
  with pytest.raises(PretrainError, match=r"holds jobs \(mha/result.json\) but no sweep.json"):
    manifest.checked(str(tmp_path / "sweep"), _manifest())
  assert manifest.checked(str(tmp_path / "empty"), _manifest()) == _manifest()
