"""python -m pretrain.plan: a plan as text and JSON; bad input is one `error:` line and exit status 2."""

import json
import os
import subprocess
import sys

import pytest

from pretrain.plan import isolate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MICRO = [
  "--config=configs/gpt2_tiny.py",
  "--config.model.num_layers=1",
  "--config.model.hidden_size=64",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=128",
  "--config.model.max_position_embeddings=64",
  "--config.data.max_seq_length=32",
  "--config.tokenizer.vocab_size=256",
  "--config.train.batch_size=8",
  "--config.eval.every_steps=0",
]


def _plan(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "pretrain.plan", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )


def test_a_gpu_plan_prints_the_report_and_writes_json(tmp_path, needs_gpu_compiler):
  out = tmp_path / "plan.json"
  r = _plan(
    *[a for a in _MICRO if "batch_size" not in a],  # The first of two overrides of a key wins.
    "--target=gpu:h100x16",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=-1",
    f"--json_out={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  plan = json.loads(out.read_text())
  assert plan["target"] == "gpu:h100x16" and plan["hosts"] == 2 and plan["fits"]
  assert plan["mesh"] == {"data": 2, "fsdp": 8, "tensor": 1}
  # The data axis spans the two hosts: its gradient all-reduce crosses the network, FSDP stays on NVLink.
  assert sum(c["network_bytes"] for c in plan["collectives"].values()) > 0
  assert plan["collectives"]["all-gather"]["network_bytes"] == 0
  for heading in ("memory per device:", "collectives per device per step", "predicted step"):
    assert heading in r.stdout


def test_a_compiler_crash_is_one_error_line_and_exit_3(tmp_path, needs_gpu_compiler):
  out = tmp_path / "plan.json"
  # The compile's child process kills itself with SIGSEGV, as libtpu's compiler did (isolate.py).
  env = dict(os.environ, **{isolate.CRASH_FOR_TEST_ENV: "*"})
  r = _plan(*_MICRO, "--target=gpu:h100x8", f"--json_out={out}", env=env)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 3 and len(errors) == 1, r.stderr[-3000:]
  assert errors[0].startswith("error: compiler crashed (SIGSEGV) after "), errors[0]
  assert errors[0].endswith(" s compiling the step for gpu:h100x8")
  assert "NO PLAN: the GPU compiler crashed (SIGSEGV)" in r.stdout
  plan = json.loads(out.read_text())
  assert plan["exit"] == "SIGSEGV" and not plan["fits"] and plan["memory"]["params"] > 0


@pytest.mark.parametrize(
  "args, message",
  [
    ([*_MICRO, "--target=tpu:v9-8"], "error: --target=tpu:v9-8 is unknown"),
    (_MICRO, "error: --target is required"),
    (
      ["--config=configs/nope.py", "--target=gpu:h100x8"],
      "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'",
    ),
    (
      [*_MICRO, "--target=gpu:h100x8", "--config.mesh.data=3"],
      "error: --target=gpu:h100x8 (8 devices): mesh (data=3, fsdp=1, tensor=1) needs 3 devices but there are 8",
    ),
    ([*_MICRO, "--target=gpu:h100x8", "--hbm_limit_gib=-1"], "error: --hbm_limit_gib=-1.0 must be"),
  ],
)
def test_bad_input_is_one_error_line_and_exit_2(args, message, request):
  if "--target=gpu:h100x8" in args and "nope" not in args[0]:
    request.getfixturevalue("needs_gpu_compiler")  # These two get as far as the target's devices.
  r = _plan(*args)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
  assert errors[0].startswith(message), errors[0]
  assert "Traceback" not in r.stderr
