"""Launch scripts: the gcloud commands of a TPU pod run (dry run), relaunch after preemption, the sbatch script."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
    f"launch_{name}", os.path.join(REPO, "launch", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu = _load("tpu")
slurm = _load("slurm")


def _dry_run(script, *args, preflight=False):
  """The script's --dry_run; tpu.py's preflight (a compile of the train step) only when asked for."""
  skip = ["--skip_preflight"] if script == "tpu.py" and not preflight else []
  r = subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", script), "--dry_run", *skip, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600 if preflight else 120,  # A preflight compiles (on loaded CI cores: minutes).
  )
  commands = [line[2:] for line in r.stdout.splitlines() if line.startswith("+ ")]
  return r, commands


def _gcloud(commands):
  """The gcloud commands as argument lists (the local tar pipeline is a shell line, not gcloud)."""
  return [shlex.split(c) for c in commands if c.startswith("gcloud ")]


def _flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def test_v4_32_tpu_vm_run(tmp_path):
  r, commands = _dry_run(
    "tpu.py",
    "--name=bert-v4",
    "--zone=us-central2-b",
    "--accelerator_type=v4-32",
    "--workdir=gs://bkt/runs/bert_base",
    "--project=my-proj",
    "--",
    "--config=configs/bert_base.py",
    "--config.data.source=prepared",
    "--config.data.paths=gs://bkt/wiki_store",
  )
  assert r.returncode == 0, r.stderr
  cmds = _gcloud(commands)
  assert [c[:5] for c in cmds] == [
    [
      "gcloud",
      "storage",
      "ls",
      "gs://bkt/runs/bert_base/checkpoints/*/commit_success.txt",
    ],  # Done? No.
    ["gcloud", "compute", "tpus", "tpu-vm", "describe"],  # Is there a TPU of this name? No.
    ["gcloud", "compute", "tpus", "tpu-vm", "create"],
    ["gcloud", "compute", "tpus", "tpu-vm", "describe"],  # Until READY.
    ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
    ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],  # Unpack the code.
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
    ],  # pip install (no corpus copy: the store is read from GCS).
    ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],  # Stop a leftover run.
    ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],  # Train.
    ["gcloud", "storage", "ls", "gs://bkt/runs/bert_base/checkpoints/*/commit_success.txt"],
    ["gcloud", "compute", "tpus", "tpu-vm", "delete"],
  ]
  create = cmds[2]
  assert create[5] == "bert-v4"
  assert _flag(create, "zone") == "us-central2-b" and _flag(create, "project") == "my-proj"
  assert (
    _flag(create, "accelerator-type") == "v4-32"
    and _flag(create, "version") == "tpu-ubuntu2204-base"
  )
  assert "--spot" not in create
  for c in cmds[4:9]:
    assert "--worker=all" in c and _flag(c, "zone") == "us-central2-b"
  tarball = os.path.join(tempfile.gettempdir(), "pretrain-bert-v4.tar.gz")
  assert cmds[4][5:7] == [tarball, "bert-v4:pretrain.tar.gz"]
  assert all(c[5] == "bert-v4" for c in cmds[5:9])
  assert "pip install --quiet -e ~/pretrain 'jax[tpu]>=0.10.2,<0.11' gcsfs" in _flag(
    cmds[6], "command"
  )
  assert not any("rsync" in c for c in commands)
  train = _flag(cmds[8], "command")
  assert 'export LIBTPU_INIT_ARGS="--fibers_default_thread_stack_size=67108864 ' in train
  assert train.endswith(
    "exec python3 -m pretrain.train --config=configs/bert_base.py "
    "--config.data.source=prepared --config.data.paths=gs://bkt/wiki_store "
    "--workdir=gs://bkt/runs/bert_base"
  )
  assert cmds[-1] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "delete",
    "bert-v4",
    "--quiet",
    "--zone=us-central2-b",
    "--project=my-proj",
  ]
  tar = [c for c in commands if not c.startswith("gcloud ")]
  assert tar == [
    f"git -C {REPO} ls-files -z --cached --others --exclude-standard | "
    f"tar -czf {tarball} -C {REPO} --null -T -"
  ]
  assert "holds step 1000000" in r.stdout  # bert_base's train.steps, read from the config file.


def test_v5p_128_queued_spot_run_from_git():
  r, commands = _dry_run(
    "tpu.py",
    "--name=bert-v5p",
    "--zone=us-east5-a",
    "--accelerator_type=v5p-128",
    "--workdir=gs://bkt/runs/b",
    "--queued",
    "--spot",
    "--git_url=https://example.com/pretrain.git",
    "--git_ref=v1.2",
    "--",
    "--config=configs/bert_base.py",
    "--config.train.steps=5000",
  )
  assert r.returncode == 0, r.stderr
  cmds = _gcloud(commands)
  assert len(cmds) == len(commands)  # Nothing copied from this checkout.
  create = cmds[2]
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "bert-v5p"]
  assert _flag(create, "node-id") == "bert-v5p" and _flag(create, "accelerator-type") == "v5p-128"
  assert (
    _flag(create, "runtime-version") == "v2-alpha-tpuv5" and _flag(create, "zone") == "us-east5-a"
  )
  assert "--spot" in create
  assert cmds[3][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
  assert _flag(cmds[3], "format") == "value(state.state)"
  clone = _flag(cmds[4], "command")
  assert (
    "git clone --quiet https://example.com/pretrain.git ~/pretrain" in clone
    and "checkout --quiet v1.2" in clone
  )
  ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert len(ssh) == 4 and all("--worker=all" in c for c in ssh)
  assert _flag(ssh[-1], "command").endswith(
    "python3 -m pretrain.train --config=configs/bert_base.py --config.train.steps=5000 --workdir=gs://bkt/runs/b"
  )
  assert cmds[-1] == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "bert-v5p",
    "--force",
    "--quiet",
    "--zone=us-east5-a",
  ]
  assert "holds step 5000" in r.stdout


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--accelerator_type=v4-30", "--workdir=gs://b/r"],
      "accelerator type 'v4-30': v4 slices come in multiples of 8",
    ),
    (["--accelerator_type=v9-8", "--workdir=gs://b/r"], "accelerator type 'v9-8' is not one of"),
    (
      ["--accelerator_type=v4-8", "--workdir=/home/me/run"],
      "--workdir=/home/me/run must be a gs:// path",
    ),
  ],
)
def test_tpu_launcher_refuses_bad_input(args, message):
  r, commands = _dry_run(
    "tpu.py", "--name=x", "--zone=us-central2-b", *args, "--", "--config=configs/bert_tiny.py"
  )
  assert r.returncode == 2 and commands == []
  # The error line, whatever jax's plugins logged before it (the CUDA plugin of the aot extra does).
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), r.stderr


class _Cloud:
  """A fake gcloud: the TPU is preempted during the first training attempt, which stops at step 300."""

  def __init__(self, steps):
    self.steps, self.log, self.trainings, self.checkpoint = steps, [], 0, None
    self.state = "NOT_FOUND"

  def __call__(self, cmd, *, capture=False, check=True, dry_answer=""):
    del capture, check, dry_answer
    argv = cmd if isinstance(cmd, list) else [cmd]
    verb = argv[4] if argv[:3] == ["gcloud", "compute", "tpus"] else " ".join(argv[:3])
    command = next((a for a in argv if a.startswith("--command=")), "")
    self.log.append(
      verb if verb != "ssh" else "ssh train" if "pretrain.train" in command else "ssh"
    )
    if verb == "create":
      self.state = "READY"
    elif verb == "delete":
      self.state = "NOT_FOUND"
    elif verb == "describe":
      return tpu.Result(0 if self.state != "NOT_FOUND" else 1, self.state)
    elif verb == "gcloud storage ls":
      # Committed steps only; a step folder whose save was cut off has no commit file and is not listed.
      listing = (
        ""
        if self.checkpoint is None
        else f"gs://b/r/checkpoints/{self.checkpoint}/commit_success.txt\n"
      )
      return tpu.Result(0 if listing else 1, listing)
    elif "pretrain.train" in command:
      self.trainings += 1
      if self.trainings == 1:
        self.checkpoint, self.state = 300, "PREEMPTED"
        return tpu.Result(255)
      self.checkpoint = self.steps
    return tpu.Result(0)

  def sleep(self, seconds):
    del seconds


def test_preempted_tpu_is_recreated_and_the_run_resumed():
  cloud = _Cloud(steps=1000)
  run = tpu.TpuRun(
    "x",
    "us-central2-b",
    "v4-32",
    "gs://b/r",
    ["--config=configs/bert_base.py"],
    1000,
    git_url="https://example.com/p.git",
    sh=cloud,
  )
  assert run.run() == 1
  assert cloud.log == [
    "gcloud storage ls",
    "describe",
    "create",
    "describe",
    "ssh",
    "ssh",
    "ssh",
    "ssh train",
    "gcloud storage ls",
    "describe",  # Stopped at 300 of 1000; the TPU was preempted:
    "delete",
    "create",
    "describe",
    "ssh",
    "ssh",  # a new one, set up again,
    "ssh",
    "ssh train",
    "gcloud storage ls",  # and the same train command resumes to the end.
    "delete",
  ]


def test_a_run_that_keeps_failing_stops_after_max_restarts_and_deletes_the_tpu():
  cloud = _Cloud(steps=1000)
  cloud.steps = 500  # Every attempt after the first ends at 500, never at the run's 1000.
  run = tpu.TpuRun(
    "x",
    "us-central2-b",
    "v4-32",
    "gs://b/r",
    ["--config=configs/bert_base.py"],
    1000,
    git_url="https://example.com/p.git",
    max_restarts=2,
    sh=cloud,
  )
  with pytest.raises(
    tpu.LaunchError, match="stopped at checkpoint step 500 of 1000 after 2 restarts"
  ):
    run.run()
  assert cloud.log.count("ssh train") == 3 and cloud.log[-1] == "delete"


def test_the_code_tarball_holds_the_checkout_without_ignored_files(tmp_path):
  tarball = tmp_path / "code.tar.gz"
  assert subprocess.run(tpu.pack_command(str(tarball)), shell=True, cwd=tmp_path).returncode == 0
  names = subprocess.run(
    ["tar", "-tzf", str(tarball)], capture_output=True, text=True, check=True
  ).stdout.split()
  assert {"pyproject.toml", "pretrain/train.py", "pretrain/distributed.py", "launch/tpu.py"} <= set(
    names
  )
  assert not any(n.startswith(".venv/") or "__pycache__" in n for n in names)


def test_steps_come_from_the_config_file_and_its_overrides():
  assert tpu.config_steps(["--config=configs/bert_tiny.py"]) == 1200
  assert tpu.config_steps(["--config=configs/bert_tiny.py", "--config.train.steps=1_000"]) == 1000


def test_sbatch_script_one_process_per_gpu(tmp_path):
  r, commands = _dry_run(
    "slurm.py",
    "--nodes=4",
    "--gpus_per_node=8",
    "--partition=gpu",
    "--account=lm",
    "--time=2-00:00:00",
    "--venv=/opt/venv",
    "--job_name=bert",
    "--",
    "--config=configs/bert_base.py",
    "--workdir=/shared/runs/bert base",
  )
  assert r.returncode == 0, r.stderr
  assert commands == ["sbatch bert.sbatch"]
  script = r.stdout[: r.stdout.index("+ sbatch")]
  directives = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
  assert directives == [
    "--job-name=bert",
    "--nodes=4",
    "--ntasks-per-node=8",
    "--gpus-per-node=8",
    "--time=2-00:00:00",
    "--partition=gpu",
    "--account=lm",
    "--output=%x-%j.out",
    "--open-mode=append",
    "--signal=TERM@120",
    "--requeue",
  ]
  assert f"cd {REPO}\n" in script and "source /opt/venv/bin/activate\n" in script
  srun = [line for line in script.splitlines() if line.startswith("srun ")]
  assert srun == [
    "srun --kill-on-bad-exit=1 python -m pretrain.train --config=configs/bert_base.py "
    "'--workdir=/shared/runs/bert base'"
  ]
  path = tmp_path / "bert.sbatch"
  path.write_text(script)
  assert (
    subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
  )  # Valid bash.


def test_sbatch_script_one_process_per_node():
  script = slurm.sbatch_script(
    ["--config=configs/bert_base.py", "--workdir=/shared/r"],
    nodes=2,
    gpus_per_node=4,
    tasks="per_node",
    coordinator_port=29500,
  )
  assert "#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=4\n" in script
  assert script.rstrip().endswith(
    "python -m pretrain.train --config=configs/bert_base.py --workdir=/shared/r "
    "--coordinator_port=29500"
  )
  assert "2 process(es), one per node" in script


def test_slurm_launcher_refuses_bad_input():
  r, _ = _dry_run(
    "slurm.py",
    "--nodes=2",
    "--gpus_per_node=8",
    "--time=forever",
    "--",
    "--config=configs/bert_base.py",
    "--workdir=/shared/r",
  )
  assert r.returncode == 2 and "--time='forever' is not a SLURM time" in r.stderr
  r, _ = _dry_run(
    "slurm.py", "--nodes=2", "--gpus_per_node=8", "--", "--config=configs/bert_base.py"
  )
  assert r.returncode == 2 and "need --config=<file> and --workdir=<shared directory>" in r.stderr


# A BERT small enough to compile for a v5e-4 in seconds; with a 262,144 x 4,096 embedding it is 4.3 GB of
# f32 parameters on every chip (data parallel), 17 GB with its gradient and AdamW moments: not on 16 GB.
_MICRO_BERT = [
  "--config=configs/bert_tiny.py",
  "--config.model.num_layers=1",
  "--config.model.num_heads=2",
  "--config.model.intermediate_size=128",
  "--config.model.max_position_embeddings=64",
  "--config.data.max_seq_length=32",
  "--config.data.max_predictions_per_seq=4",
  "--config.train.batch_size=8",
  "--config.eval.every_steps=0",
]
_needs_tpu_compiler = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="the aot extra (libtpu, to compile for TPU here) is not installed: pip install -e '.[aot]'",
)


def _preflight_dry_run(name, *train_args):
  """tpu.py --dry_run of a v5litepod-4 run with its preflight."""
  return _dry_run(
    "tpu.py",
    f"--name={name}",
    "--zone=us-west4-a",
    "--accelerator_type=v5litepod-4",
    "--workdir=gs://b/r",
    "--",
    *train_args,
    preflight=True,
  )


def _refused(r, commands) -> str:
  """The one `error:` line of a launch the preflight refused before any command ran."""
  assert r.returncode == 2 and commands == [], r.stdout
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr
  assert "--skip_preflight" in errors[0]
  return errors[0]


_MICRO_BERT_64 = [
  *_MICRO_BERT,
  "--config.model.hidden_size=64",
  "--config.tokenizer.vocab_size=256",
]


@_needs_tpu_compiler
def test_dry_run_shows_the_preflight_then_the_launch_of_a_config_that_fits():
  r, commands = _preflight_dry_run("micro", *_MICRO_BERT_64)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  plan_line = next(
    i for i, l in enumerate(lines) if l.startswith("preflight: python -m pretrain.plan")
  )
  assert "--target=tpu:v5litepod-4" in lines[plan_line]
  assert "--config.model.hidden_size=64" in lines[plan_line]
  fits = next(i for i, l in enumerate(lines) if l.startswith("preflight: fits v5litepod-4"))
  assert "4 x TPU v5e" in lines[fits] and "predicted step" in lines[fits] and "MFU" in lines[fits]
  create = next(i for i, l in enumerate(lines) if "tpus tpu-vm create" in l)
  assert plan_line < fits < create  # The preflight ran before any TPU resource.


@_needs_tpu_compiler
def test_preflight_refuses_a_config_that_does_not_fit_before_creating_anything():
  r, commands = _preflight_dry_run(
    "huge",
    *_MICRO_BERT,
    "--config.model.hidden_size=4096",
    "--config.model.num_heads=32",
    "--config.tokenizer.vocab_size=262144",
  )
  error = _refused(r, commands)
  assert error.startswith("error: preflight: the config does not fit v5litepod-4 (4 x TPU v5e)")
  assert "GiB" in error
  assert "preflight: python -m pretrain.plan" in r.stdout


@_needs_tpu_compiler
def test_preflight_reports_a_compiler_crash_as_a_failed_preflight(monkeypatch):
  # The plan's child process kills itself with SIGSEGV where libtpu's compiler crashed
  # (pretrain/plan/isolate.py); the preflight refuses to launch, saying so.
  monkeypatch.setenv("PRETRAIN_PLAN_CRASH_FOR_TEST", "*")
  error = _refused(*_preflight_dry_run("crash", *_MICRO_BERT_64))
  assert error.startswith("error: preflight failed: the plan's compiler crashed (SIGSEGV) after")


@_needs_tpu_compiler
def test_preflight_plans_every_phase_and_refuses_if_one_does_not_fit():
  # tests/plan/two_phase_micro.py: 16 then 32 tokens; the second phase's batch of 2M sequences needs
  # ~69 GB of temporaries per v5e chip (16 GB).
  r, commands = _preflight_dry_run(
    "phases",
    "--config=tests/plan/two_phase_micro.py",
    "--config.train.phases.seq32.train.batch_size=2097152",
  )
  error = _refused(r, commands)
  assert "preflight: phase seq16: fits v5litepod-4 (4 x TPU v5e" in r.stdout
  assert error.startswith(
    "error: preflight: phase seq32: the config does not fit v5litepod-4 (4 x TPU v5e): the compiler "
    "refused it: RESOURCE_EXHAUSTED"
  ), error


def test_preflight_runs_the_plan_of_the_config_and_its_overrides_only():
  cmd = tpu.preflight_command(
    "v5p-128",
    ["--config=configs/bert_base.py", "--config.mesh.fsdp=-1", "--coordinator_port=1"],
    "p.json",
  )
  assert cmd[1:] == [
    "-m",
    "pretrain.plan",
    "--config=configs/bert_base.py",
    "--config.mesh.fsdp=-1",
    "--target=tpu:v5p-128",
    "--json_out=p.json",
  ]
  json.dumps(cmd)
