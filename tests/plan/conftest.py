"""The plan tests' setup: their helper module on the path, and the aot extra's compilers or a skip.

The plan tests compile for TPU and GPU targets with jax's ahead-of-time compilers (the `aot` extra);
where that extra is absent here they skip, saying so. CI installs it (.ci/run), so there they run.
"""

import os
import sys

import pytest

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
pytest.register_assert_rewrite("plan_micro")


def _aot(platform: str) -> str | None:
  from pretrain.plan import compile as compile_lib  # pylint: disable=import-outside-toplevel

  return compile_lib.aot_missing(platform)


@pytest.fixture
def needs_tpu_compiler():
  missing = _aot("tpu")
  if missing:
    pytest.skip(f"the aot extra is not installed here: {missing}")


@pytest.fixture
def needs_gpu_compiler():
  missing = _aot("gpu")
  if missing:
    pytest.skip(f"the aot extra is not installed here: {missing}")
