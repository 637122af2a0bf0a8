"""The persistent compilation cache (pretrain/training/compile_cache.py), alone and under a restarted run."""

import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from pretrain.errors import PretrainError
from pretrain.train import train
from pretrain.training import compile_cache

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # For test_profiling's readers and fake_gcs.
from test_profiling import traced_steps, traces  # pylint: disable=g-import-not-at-top,wrong-import-position
from fake_gcs import BUCKET, root_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

fake_gcs = root_fixture()


def entries(cache_dir) -> list[str]:
  return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


def test_a_second_compile_of_the_same_program_hits_and_close_restores_jax(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  cache_dir = str(tmp_path / "cache")
  watch = compile_cache.configure(
    {"compilation_cache_dir": cache_dir, "compilation_cache_min_compile_seconds": 0}
  )
  try:
    x = jnp.ones((8, 8))
    jax.jit(lambda x: jnp.tanh(x) @ x + 3.0).lower(x).compile()  # A new function: compiled.
    written = entries(cache_dir)
    assert any(e.startswith("jit__lambda") for e in written)
    assert watch.hits == 0 and watch.misses >= 1
    jax.jit(lambda x: jnp.tanh(x) @ x + 3.0).lower(x).compile()  # The same program again: loaded.
    assert watch.hits == 1 and entries(cache_dir) == written
    assert watch.row() == {"compile_cache_hits": 1, "compile_cache_misses": watch.misses}
  finally:
    watch.close()
  assert jax.config.jax_compilation_cache_dir == before
  jax.jit(lambda x: jnp.tanh(x) @ x + 4.0).lower(x).compile()
  assert entries(cache_dir) == written and watch.hits == 1  # Closed: neither written nor watched.


def test_no_cache_dir_leaves_jax_alone():
  before = jax.config.jax_compilation_cache_dir  # The test session's own cache (tests/conftest.py).
  watch = compile_cache.configure({"compilation_cache_dir": ""})
  assert jax.config.jax_compilation_cache_dir == before
  watch.close()
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.parametrize(
  "train_cfg, match",
  [
    ({"compilation_cache_dir": 3}, "compilation_cache_dir"),
    ({"compilation_cache_min_compile_seconds": -1}, "min_compile_seconds"),
    ({"compilation_cache_min_compile_seconds": "x"}, "min_compile_seconds"),
  ],
)
def test_bad_cache_keys_are_refused(train_cfg, match):
  with pytest.raises(PretrainError, match=match):
    compile_cache.check(train_cfg)


def test_a_restarted_run_loads_its_steps_from_the_cache_and_the_profile_has_its_steps(
  tiny_config, tmp_path
):
  c = tiny_config
  c.train.update(
    steps=4,
    log_every=1,
    compilation_cache_dir=str(tmp_path / "cache"),
    compilation_cache_min_compile_seconds=0.0,
  )
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 0  # Saved on the stop and at the end only.
  c.metrics.profile_steps = "2,3"
  workdir = str(tmp_path / "run")
  train(c, workdir, stop_at_step=3)  # A first life, preempted after step 3.
  written = entries(c.train.compilation_cache_dir)
  assert any(e.startswith("jit_train_step") for e in written), written
  (trace,) = traces(os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(trace) > 0 and traced_steps(trace) == [2, 3]

  train(c, workdir)  # The restart resumes at step 3: its train step comes from the cache.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  first_life = [r for r in rows if "loss" in r and r["step"] <= 3]
  second_life = [r for r in rows if "loss" in r and r["step"] > 3]
  assert all(r["compile_cache_hits"] == 0 for r in first_life)
  assert second_life and all(r["compile_cache_hits"] >= 1 for r in second_life)
  assert second_life[-1]["restarts"] == 1 and second_life[-1]["compile_seconds_saved"] >= 0
  assert entries(c.train.compilation_cache_dir) == written  # Nothing new to compile.
  # The restart ran step 4, outside the profiled range: still the one trace.
  assert len(glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*"))) == 1


def test_a_cache_in_a_bucket(fake_gcs):
  watch = compile_cache.configure(
    {"compilation_cache_dir": f"gs://{BUCKET}/cache", "compilation_cache_min_compile_seconds": 0}
  )
  try:
    x = jnp.ones((8, 8))
    jax.jit(lambda x: jnp.tanh(x) @ x + 5.0).lower(x).compile()
    written = entries(fake_gcs / BUCKET / "cache")
    assert any(e.startswith("jit__lambda") for e in written)
    jax.jit(lambda x: jnp.tanh(x) @ x + 5.0).lower(x).compile()
    assert watch.hits == 1
  finally:
    watch.close()
