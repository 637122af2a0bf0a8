"""Profiling chosen steps (pretrain/training/profiling.py): the trace lands where TensorBoard reads it,
holding exactly the configured steps."""

import glob
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from pretrain.errors import PretrainError
from pretrain.training import profiling

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For fake_gcs.
from fake_gcs import BUCKET, root_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

fake_gcs = root_fixture()


def traces(tensorboard_dir) -> list[str]:
  """The xplane files of the runs under a TensorBoard log dir, as the profile plugin lists them."""
  return sorted(glob.glob(os.path.join(tensorboard_dir, "plugins", "profile", "*", "*.xplane.pb")))


def traced_steps(path) -> list[int]:
  """The step numbers of the step annotations in one xplane file."""
  data = jax.profiler.ProfileData.from_file(str(path))
  return sorted(
    dict(event.stats)["step_num"]
    for plane in data.planes
    for line in plane.lines
    for event in line.events
    if event.name == profiling.TRACE_NAME
  )


def run_steps(profiler, n):
  step = profiler.wrap(jax.jit(lambda x: jnp.sin(x) @ x))
  x = jnp.ones((16, 16))
  for _ in range(n):
    x = step(x)
  profiler.stop()


def test_parse_steps():
  assert profiling.parse_steps("") is None
  assert profiling.parse_steps("3,5") == (3, 5)
  assert profiling.parse_steps(" 4 , 4 ") == (4, 4)
  for bad in ("5,3", "0,2", "3", "a,b", "1,2,3"):
    with pytest.raises(PretrainError, match="must be 'START,END'"):
      profiling.parse_steps(bad)


def test_trace_holds_exactly_the_configured_steps(tmp_path):
  profiler = profiling.StepProfiler({"profile_steps": "3,4"}, str(tmp_path), start_step=0)
  run_steps(profiler, 6)
  (trace,) = traces(profiling.trace_dir(str(tmp_path)))
  assert os.path.getsize(trace) > 0
  assert traced_steps(trace) == [3, 4]


def test_a_resumed_run_traces_the_rest_of_the_range_and_a_later_one_nothing(tmp_path):
  profiler = profiling.StepProfiler({"profile_steps": "2,4"}, str(tmp_path), start_step=2)
  run_steps(profiler, 3)  # Steps 3, 4, 5.
  (trace,) = traces(profiling.trace_dir(str(tmp_path)))
  assert traced_steps(trace) == [3, 4]
  later = tmp_path / "later"
  run_steps(profiling.StepProfiler({"profile_steps": "2,4"}, str(later), start_step=4), 2)
  assert not os.path.exists(later)
  off = profiling.StepProfiler({}, str(tmp_path), start_step=0)
  fn = lambda x: x
  assert off.wrap(fn) is fn


def test_a_trace_into_a_gcs_workdir_is_copied_up(fake_gcs, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  profiler = profiling.StepProfiler({"profile_steps": "1,1"}, f"gs://{BUCKET}/run", start_step=0)
  run_steps(profiler, 2)
  (trace,) = traces(fake_gcs / BUCKET / "run" / "tensorboard")
  assert traced_steps(trace) == [1]
  assert not os.path.exists(tmp_path / "gs:")  # Nothing under a local folder named after the URL.


def test_validate_refuses_bad_profile_and_cache_keys(tiny_config):
  from pretrain import config as config_lib  # pylint: disable=g-import-not-at-top
  from pretrain import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(tiny_config.mesh)
  config_lib.validate(tiny_config, mesh)
  bad = tiny_config.copy_and_resolve_references()
  bad.metrics.profile_steps = "3,1"
  with pytest.raises(PretrainError, match="profile_steps"):
    config_lib.validate(bad, mesh)
  bad = tiny_config.copy_and_resolve_references()
  bad.train.compilation_cache_min_compile_seconds = -1.0
  with pytest.raises(PretrainError, match="min_compile_seconds"):
    config_lib.validate(bad, mesh)
