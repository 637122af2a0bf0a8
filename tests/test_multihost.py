"""Multi-process runs on this machine through launch/local.py: 2 processes x 4 CPU devices train exactly
as 1 process x 8 does, their checkpoint resumes in 1 process, and bad launches fail with one clear error."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pretrain import distributed
from pretrain.data.sources import open_stores
from pretrain.errors import PretrainError
from pretrain.train import train

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import train_rows  # pylint: disable=g-import-not-at-top,wrong-import-position

LOCAL = os.path.join(REPO, "launch", "local.py")


def _load_local():
  spec = importlib.util.spec_from_file_location("launch_local", LOCAL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config_file(config, path) -> str:
  """A config file for the CLI holding exactly `config`."""
  path.write_text(
    "import json\nimport ml_collections\n\n\ndef get_config():\n"
    f"  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n",
    encoding="utf-8",
  )
  return str(path)


def _checkpoint(workdir, step):
  """(state as numpy, data-iterator state) of checkpoint `step`, read onto this process's first device.

  A target is needed: a multi-process checkpoint names devices this process does not have (process 1's
  CPU devices are ids 2048..).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  mngr = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
  )
  metadata = mngr.item_metadata(step)["state"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
  )
  mngr.close()
  return jax.tree.map(np.asarray, out["state"]), out["data"]


def _launch(args, timeout=240):
  return subprocess.run(
    [sys.executable, LOCAL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
  )


def test_two_processes_train_as_one_and_resume_in_one(text_corpus, tmp_path):
  c = make_tiny_config(text_corpus)
  c.optimizer.decay = (
    "constant"  # The 3-step and 6-step runs then share one learning-rate schedule.
  )
  c.train.update(steps=6, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 3
  straight, multi = str(tmp_path / "straight"), str(tmp_path / "multi")
  open_stores(c.data, c.tokenizer)  # Prepared once here, not by all three runs at once.

  half = c.copy_and_resolve_references()
  half.train.steps = 3
  with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
    launch = subprocess.Popen(  # 2 processes x 4 devices, steps 1..3, while this process runs the reference.
      [
        sys.executable,
        LOCAL,
        "-n",
        "2",
        "--devices_per_process",
        "4",
        "--",
        f"--config={_config_file(half, tmp_path / 'half.py')}",
        f"--workdir={multi}",
      ],
      cwd=REPO,
      stdout=out,
      stderr=err,
    )
    train(c, straight)  # 1 process x 8 devices (this one), 6 steps uninterrupted.
    launch.wait(timeout=300)
  out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
  assert launch.returncode == 0, err[-3000:]
  assert "[1] " in err and "process 1 of 2: 4 local devices, 8 in all" in err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 3  # Only process 0 prints the summary.

  want = train_rows(straight)
  got = train_rows(multi)
  assert [row["step"] for row in got] == [1, 2, 3]
  for key in ("loss", "mlm_loss", "grad_norm"):
    np.testing.assert_allclose(
      [row[key] for row in got], [row[key] for row in want[:3]], rtol=1e-5, err_msg=key
    )
  state_2x4, data_2x4 = _checkpoint(multi, 3)
  state_1x8, data_1x8 = _checkpoint(straight, 3)
  assert data_2x4 == data_1x8  # The same global example position: the next batch is the same.
  for a, b in zip(jax.tree.leaves(state_2x4), jax.tree.leaves(state_1x8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  train(c, multi)  # Elastic resume: the 2-process checkpoint continues in 1 process to step 6.
  got = train_rows(multi)
  assert [row["step"] for row in got] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "mlm_loss", "grad_norm"):
    np.testing.assert_allclose(
      [row[key] for row in got], [row[key] for row in want], rtol=1e-5, err_msg=key
    )
  state_a, data_a = _checkpoint(multi, 6)
  state_b, data_b = _checkpoint(straight, 6)
  assert data_a == data_b
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_mesh_the_processes_cannot_fill_stops_every_process(text_corpus, tmp_path):
  c = make_tiny_config(text_corpus)
  c.mesh.update(data=3)
  workdir = str(tmp_path / "run")
  r = _launch(
    [
      "-n",
      "2",
      "--devices_per_process",
      "4",
      "--",
      f"--config={_config_file(c, tmp_path / 'c.py')}",
      f"--workdir={workdir}",
    ]
  )
  assert r.returncode == 2
  assert "error: mesh (data=3, fsdp=1, tensor=1) needs 3 devices but there are 8" in r.stderr
  assert "exited with status 2" in r.stderr
  assert not os.path.exists(workdir)


def _train_cli(config_path, workdir, *flags_):
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "pretrain.train",
      f"--config={config_path}",
      f"--workdir={workdir}",
      "--distributed_timeout=3",
      *flags_,
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
  )


def test_unreachable_coordinator_and_missing_process_fail_with_one_clear_error(
  text_corpus, tmp_path
):
  config_path = _config_file(make_tiny_config(text_corpus), tmp_path / "c.py")
  local = _load_local()
  nobody, alone = local.free_port(), local.free_port()
  procs = [  # Run side by side; each gives up after --distributed_timeout=3 s.
    _train_cli(
      config_path,
      tmp_path / "a",
      f"--coordinator_address=127.0.0.1:{nobody}",
      "--num_processes=2",
      "--process_id=1",
    ),
    _train_cli(
      config_path,
      tmp_path / "b",
      f"--coordinator_address=127.0.0.1:{alone}",
      "--num_processes=2",
      "--process_id=0",
    ),
  ]
  outs = [p.communicate(timeout=120) for p in procs]
  errors = [err.strip().splitlines()[-1] for _, err in outs]
  assert [p.returncode for p in procs] == [2, 2], errors
  assert errors[0] == (
    f"error: process 1 of 2 could not reach the coordinator at 127.0.0.1:{nobody} within 3 s: nothing "
    "accepts connections there (wrong address or port, or process 0 is not running)"
  )
  assert errors[1].startswith(
    f"error: process 0 started the coordinator at 127.0.0.1:{alone}, but not all 2 processes joined within 3 s"
  )
  assert not any("Check failure" in err or "Traceback" in err for _, err in outs)
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_processes_whose_configs_differ_all_stop_naming_the_process_and_the_field(
  text_corpus, tmp_path
):
  c = make_tiny_config(text_corpus)
  open_stores(c.data, c.tokenizer)  # Prepared once here, not by both processes at once.
  config_path = _config_file(c, tmp_path / "c.py")
  address = f"127.0.0.1:{_load_local().free_port()}"
  workdir = tmp_path / "run"
  procs = [
    _train_cli(
      config_path,
      workdir,
      f"--coordinator_address={address}",
      "--num_processes=2",
      f"--process_id={pid}",
      "--distributed_timeout=120",  # Both must join; the loaded test machine may start them slowly.
      *extra,
    )
    for pid, extra in ((0, ()), (1, ("--config.optimizer.learning_rate=0.002",)))
  ]
  outs = [
    p.communicate(timeout=300) for p in procs
  ]  # Bounded: neither waits in a later collective.
  errors = [err.strip().splitlines()[-1] for _, err in outs]
  assert [p.returncode for p in procs] == [2, 2], [err[-3000:] for _, err in outs]
  assert errors[0] == errors[1]  # Both stop with the same error.
  assert errors[0].startswith("error: the processes do not run the same thing: process 1: ")
  assert "config optimizer.learning_rate is 0.002 on process 1 but 0.001 on process 0" in errors[0]
  assert "tokenizer" not in errors[0].split("Every process")[0]  # Only the field that differs.
  assert not os.path.exists(workdir)  # Checked before the workdir is made or read.


def test_disagreement_names_every_field_that_differs():
  ref = {"config": {"a.x": "1", "a.y": "2"}, "tokenizer": "t" * 64, "corpus": "c" * 64}
  same = dict(ref)
  other = {
    "config": {"a.x": "1", "a.y": "3", "b.z": "4"},
    "tokenizer": "t" * 64,
    "corpus": "d" * 64,
  }
  assert distributed.disagreement([ref, same]) is None
  message = distributed.disagreement([ref, same, other])
  assert "process 1" not in message
  assert message.startswith(
    "the processes do not run the same thing: process 2: config a.y is 3 on process 2 but 2 on "
    "process 0; config b.z is 4 on process 2 but (unset) on process 0; corpus fingerprint is "
    "dddddddddddd on process 2 but cccccccccccc on process 0. Every process"
  )


def test_processes_told_different_counts_are_refused():
  port = _load_local().free_port()
  body = (
    "import os, sys\n"
    "from pretrain import distributed\n"
    "from pretrain.errors import PretrainError\n"
    "try:\n"
    f"  distributed.initialize('127.0.0.1:{port}', int(sys.argv[1]), int(sys.argv[2]), timeout_s=20)\n"
    "except PretrainError as e:\n"
    "  print(f'error: {e}', flush=True)\n"
    "  os._exit(2)\n"
    "print('joined', flush=True)\n"
    "sys.stdin.read()\n"  # Keep the coordinator up until the other process has had its say.
    "os._exit(0)\n"
  )
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", body, n, i],
      cwd=REPO,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
    )
    for n, i in (("2", "0"), ("3", "1"))
  ]
  second = procs[1].communicate(timeout=120)[0]
  first = procs[0].communicate(input="", timeout=120)[0]
  outs = [out.strip().splitlines()[-1] for out in (first, second)]
  assert outs == [
    "joined",
    "error: this process was started as process 1 of 3, but the coordinator at "
    f"127.0.0.1:{port} formed a run of 2 processes with this one as 1; every process must be "
    "given the same --num_processes",
  ]
  assert [p.returncode for p in procs] == [0, 2]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (
      dict(coordinator_address="127.0.0.1:9", num_processes=2, process_id=2),
      "process id 2 is out of range for 2 processes (0 .. 1)",
    ),
    (
      dict(coordinator_address="127.0.0.1:9", num_processes=0, process_id=0),
      "the number of processes must be at least 1, got 0",
    ),
    (
      dict(coordinator_address="localhost", num_processes=2, process_id=1),
      "coordinator address 'localhost' is not HOST:PORT",
    ),
    (
      dict(coordinator_address="192.0.2.1:8476", num_processes=2, process_id=0),
      "coordinator address 192.0.2.1:8476 is not an address of this machine",
    ),
    (
      dict(coordinator_address="no-such-host.invalid:8476", num_processes=2, process_id=1),
      "coordinator host 'no-such-host.invalid' does not resolve",
    ),
    (dict(num_processes=2, process_id=0), "--coordinator_address missing"),
  ],
)
def test_bad_arguments_are_refused_before_jax_is_called(kwargs, message):
  with pytest.raises(PretrainError, match="^" + re.escape(message)):
    distributed.initialize(**kwargs, timeout_s=1, environ={})


def test_coordinator_port_in_use_is_refused():
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(("", 0))
    s.listen()
    port = s.getsockname()[1]
    with pytest.raises(PretrainError, match=f"coordinator port {port} is in use on this machine"):
      distributed.initialize(f"127.0.0.1:{port}", 2, 0, timeout_s=1, environ={})


SLURM = {
  "SLURM_JOB_ID": "4242",
  "SLURM_NTASKS": "16",
  "SLURM_PROCID": "5",
  "SLURM_LOCALID": "1",
  "SLURM_STEP_NUM_NODES": "2",
  "SLURM_STEP_NODELIST": "gpu-a[007-008]",
}


def test_slurm_launch_is_read_from_the_environment():
  launch = distributed.detect(environ=SLURM)
  assert launch == distributed.Launch("slurm", "gpu-a007:24242", 16, 5, (1,))
  # SLURM bound one GPU to each task already: the task uses what it sees.
  assert distributed.detect(environ=dict(SLURM, CUDA_VISIBLE_DEVICES="1")).local_device_ids is None
  # One task per node: all of the node's devices.
  per_node = dict(SLURM, SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0")
  assert distributed.detect(coordinator_port=9999, environ=per_node) == distributed.Launch(
    "slurm", "gpu-a007:9999", 2, 1, None
  )
  # Explicit flags come first; a count that contradicts SLURM's is refused.
  assert distributed.detect("10.0.0.1:1234", environ=per_node) == distributed.Launch(
    "flags", "10.0.0.1:1234", 2, 1
  )
  with pytest.raises(
    PretrainError, match="--num_processes=4 but SLURM started SLURM_NTASKS=2 tasks"
  ):
    distributed.detect("10.0.0.1:1234", 4, 0, environ=per_node)
  # A single task, or no SLURM at all, is a single process.
  assert (
    distributed.detect(environ=dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0")).source == "single"
  )
  assert distributed.detect(environ={}) == distributed.Launch("single")


@pytest.mark.parametrize(
  "nodelist, first",
  [
    ("node7", "node7"),
    ("node7,node9", "node7"),
    ("gpu-a[003-010,012],gpu-b7", "gpu-a003"),
    ("n[1,3-4]", "n1"),
    ("dgx[0001-0004]", "dgx0001"),
  ],
)
def test_first_host_of_a_slurm_node_list(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first


def _script(body):
  return [sys.executable, "-c", body]


def _run_launcher(bodies, tmp_path):
  """launch/local.py's run() over `python -c body i` processes, itself in a subprocess."""
  launcher = (
    "import sys\n"
    f"sys.path.insert(0, {os.path.dirname(LOCAL)!r})\n"
    "import local\n"
    f"cmds = [[sys.executable, '-c', body, str(i)] for i, body in enumerate({bodies!r})]\n"
    "sys.exit(local.run(cmds, local.process_env(None), kill_grace_s=1.0))\n"
  )
  return subprocess.Popen(
    [sys.executable, "-c", launcher],
    cwd=tmp_path,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_launcher_stops_the_others_when_one_process_fails(tmp_path):
  p = _run_launcher(
    [
      "import time; print('waiting', flush=True); time.sleep(600)",
      "import sys, time; time.sleep(1); print('failing', file=sys.stderr); sys.exit(3)",
    ],
    tmp_path,
  )
  out, err = p.communicate(timeout=120)  # Far less than the 600 s process 0 would wait.
  assert p.returncode == 3
  assert out == "waiting\n"
  assert "[1] failing\n" in err
  assert "process 1 exited with status 3; stopping the others" in err


def test_launcher_passes_sigterm_to_every_process(tmp_path):
  body = (
    "import signal, sys, time\n"
    "def stop(signum, _):\n"
    "  open(sys.argv[1], 'w').write(signal.Signals(signum).name)\n"
    "  sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
  )
  p = _run_launcher([body, body], tmp_path)
  ready = [p.stdout.readline(), p.stdout.readline()]  # Process 0's line and process 1's (prefixed).
  assert sorted(ready) == ["[1] ready\n", "ready\n"]
  p.terminate()
  p.communicate(timeout=60)
  assert p.returncode == 0
  assert sorted(os.listdir(tmp_path)) == ["0", "1"]
  assert (tmp_path / "0").read_text() == (tmp_path / "1").read_text() == "SIGTERM"


def test_sigterm_to_one_process_stops_all_at_one_agreed_step(text_corpus, tmp_path):
  """A preemption notice reaches one process; jax's preemption service has every process save the same step."""
  c = make_tiny_config(text_corpus)
  c.train.update(steps=10_000, log_every=1)
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 10_000
  workdir = str(tmp_path / "run")
  open_stores(c.data, c.tokenizer)
  with open(tmp_path / "err.txt", "w") as err:
    launch = subprocess.Popen(
      [
        sys.executable,
        LOCAL,
        "-n",
        "2",
        "--devices_per_process",
        "4",
        "--",
        f"--config={_config_file(c, tmp_path / 'long.py')}",
        f"--workdir={workdir}",
      ],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while (
      time.time() < deadline and len(train_rows(workdir) if os.path.exists(metrics) else []) < 3
    ):
      time.sleep(0.5)
    listing = subprocess.run(
      ["pgrep", "-a", "-f", "--", "--process_id=1"], capture_output=True, text=True
    ).stdout
    pids = [line.split()[0] for line in listing.splitlines() if f"--workdir={workdir}" in line]
    assert len(pids) == 1, listing
    os.kill(int(pids[0]), signal.SIGTERM)  # Process 1 only.
    launch.wait(timeout=240)
  err = (tmp_path / "err.txt").read_text()
  assert launch.returncode == 0, err[-3000:]
  saved = re.search(r"SIGTERM received: saved a checkpoint at step (\d+)", err)
  assert saved, err[-3000:]
  step = int(saved.group(1))
  assert 3 <= step < 10_000
  assert sorted(
    int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()
  ) == [step]
  assert train_rows(workdir)[-1]["step"] <= step
