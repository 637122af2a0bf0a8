"""A run on a Cloud TPU VM or pod slice, from creation to deletion, relaunched after preemptions.

  python launch/tpu.py --name=bert-base --zone=us-central2-b --accelerator_type=v4-32 \\
      --workdir=gs://my-bucket/runs/bert_base [--queued] [--spot] [--dry_run] \\
      -- --config=configs/bert_base.py --config.data.source=prepared --config.data.paths=gs://my-bucket/wiki_store

The corpus is a token store in GCS (`python -m pretrain.prepare --out=gs://...`):
each worker reads the shards its batch rows need, so nothing is copied up front.

Before anything is created, a preflight (`python -m pretrain.plan`, which needs the `aot` extra)
compiles the run's train step for the slice on this machine and refuses a config that does not fit
in the chips' HBM (every phase of a run in phases), with the plan's numbers, or one whose compile
crashed the compiler (a failed preflight, with the reason); `--skip_preflight` launches without it.
`--dry_run` runs the preflight too.

Steps, each one `gcloud` command (`--dry_run` prints them all instead):
  1. create the TPU VM (`tpu-vm create`), or a queued resource (`--queued`),
     and wait until it is READY / ACTIVE;
  2. put the code on every worker: this checkout's files (tracked and
     untracked-but-not-ignored) as a tarball through `tpu-vm scp --worker=all`,
     or `git clone` of `--git_url` at `--git_ref`; `pip install` it with
     jax[tpu] on every worker;
  3. run `python3 -m pretrain.train` with the train flags after `--` on every
     worker (`tpu-vm ssh --worker=all`), its output streamed here. Each worker
     joins the run by itself (pretrain/distributed.py: Cloud TPU);
  4. the run is finished when the newest committed checkpoint under the
     workdir (one with orbax's `commit_success.txt`: on GCS a step's folder
     exists before its save completes) is the config's `train.steps`. Until then (a preemption, a crash, a lost ssh
     connection) the TPU is checked: if it is gone or preempted it is deleted
     and created again and the code set up again; then the same train command
     runs again and resumes from the last checkpoint;
  5. the TPU is deleted (unless `--keep`), also when the launcher fails.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The TPU software image to start from, per TPU generation.
RUNTIME_VERSIONS = {
  "v2": "tpu-ubuntu2204-base",
  "v3": "tpu-ubuntu2204-base",
  "v4": "tpu-ubuntu2204-base",
  "v5litepod": "v2-alpha-tpuv5-lite",
  "v5p": "v2-alpha-tpuv5",
  "v6e": "v2-alpha-tpuv6e",
}
_READY = {"vm": "READY", "queued": "ACTIVE"}
_PENDING = {
  "vm": {"CREATING", "STARTING", "RESTARTING", "REPAIRING"},
  "queued": {"CREATING", "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES"},
}
PIP_PACKAGES = (
  "jax[tpu]>=0.10.2,<0.11",
  "gcsfs",
)  # gcsfs: gs:// paths for the data and the workdir.
# The flag pretrain.plan gives libtpu (pretrain/plan/compile.py: its compiler overflowed its fibers'
# default stacks on gpt2_large / gpt2_xl for v5p-128 on a CPU host); given to the workers' libtpu
# too, before any of theirs, so a worker's own LIBTPU_INIT_ARGS still wins. Unverified on a chip.
TPU_COMPILER_FLAGS = "--fibers_default_thread_stack_size=67108864"
REMOTE_DIR = "~/pretrain"
PID_FILE = "~/pretrain-train.pid"
COMMIT_FILE = "commit_success.txt"  # Orbax writes it last into a step saved to GCS.


class LaunchError(Exception):
  """A TPU that cannot be created, a command that failed, a run that does not finish."""


@dataclasses.dataclass(frozen=True)
class Result:
  returncode: int
  stdout: str = ""


class Shell:
  """Runs commands, or with `dry_run` prints them (`+ cmd`) and answers as if each had succeeded."""

  def __init__(self, dry_run: bool, out=sys.stdout):
    self.dry_run = dry_run
    self.out = out

  def __call__(
    self,
    cmd: Sequence[str] | str,
    *,
    capture: bool = False,
    check: bool = True,
    dry_answer: str = "",
  ) -> Result:
    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
    print(f"+ {shown}", file=self.out, flush=True)
    if self.dry_run:
      return Result(0, dry_answer)
    proc = subprocess.run(
      cmd, shell=isinstance(cmd, str), text=True, stdout=subprocess.PIPE if capture else None
    )
    if check and proc.returncode:
      raise LaunchError(f"command failed with status {proc.returncode}: {shown}")
    return Result(proc.returncode, proc.stdout or "")

  def sleep(self, seconds: float) -> None:
    if not self.dry_run:
      time.sleep(seconds)


def preflight_command(accelerator_type: str, train_args: Sequence[str], json_out: str) -> list[str]:
  """`python -m pretrain.plan` of the run's config (and its --config.* overrides) for the slice."""
  config_args = [a for a in train_args if a.startswith("--config=") or a.startswith("--config.")]
  return [
    sys.executable,
    "-m",
    "pretrain.plan",
    *config_args,
    f"--target=tpu:{accelerator_type}",
    f"--json_out={json_out}",
  ]


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def preflight(accelerator_type: str, train_args: Sequence[str], out=sys.stdout) -> dict:
  """Compiles the run's train step for the slice (pretrain.plan); the plan, or a LaunchError when it does
  not fit (the plan's numbers in the message) or cannot be made."""
  with tempfile.TemporaryDirectory(prefix="pretrain-preflight-") as tmp:
    json_out = os.path.join(tmp, "plan.json")
    cmd = preflight_command(accelerator_type, train_args, json_out)
    print(f"preflight: python {shlex.join(cmd[1:])}", file=out, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    plan = None
    if os.path.exists(json_out):
      with open(json_out, encoding="utf-8") as f:
        plan = json.load(f)
  if plan is None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    why = errors[-1][len("error:") :].strip() if errors else proc.stderr.strip()[-600:]
    raise LaunchError(f"preflight failed: {why} (--skip_preflight launches without it)")
  phases = plan.get("phases") or [plan]  # A run in phases (train.phases): every phase must fit.
  for p in phases:
    _check_phase(accelerator_type, p, out)
  return plan


def _check_phase(accelerator_type: str, plan: dict, out) -> None:
  """Prints that the plan (of the run, or of one of its phases) fits; a LaunchError if it does not."""
  m, where = plan["memory"], f"{plan['devices']} x {plan['chip']}"
  phase = f"phase {plan['phase']['name']}: " if "phase" in plan else ""
  if "crash" in plan:
    raise LaunchError(
      f"preflight failed: {phase}the plan's {plan['crash']} (libtpu, compiling the step for "
      f"{accelerator_type} on mesh {plan['mesh']}), so whether the config fits is unknown; try "
      "another remat policy (--config.model.remat_policy), or --skip_preflight"
    )
  if not plan["fits"]:
    numbers = (
      f"peak {_gib(m['peak'])} per chip of {_gib(m['limit'])}"
      if "peak" in m
      else f"the compiler refused it: {plan.get('refusal', '')}"
    )
    raise LaunchError(
      f"preflight: {phase}the config does not fit {accelerator_type} ({where}): {numbers}; parameters "
      f"{_gib(m['params'])} + optimizer state {_gib(m['optimizer'])} per chip on mesh {plan['mesh']}. "
      "Shard it (--config.mesh.fsdp=-1 --config.mesh.data=1), rematerialize "
      "(--config.model.remat_policy=full), split the batch (--config.train.grad_accum_steps), or "
      "--skip_preflight"
    )
  r = plan["roofline"]
  print(
    f"preflight: {phase}fits {accelerator_type} ({where}, mesh {plan['mesh']}): peak {_gib(m['peak'])} of "
    f"{_gib(m['limit'])} per chip; predicted step {r['step_seconds'] * 1e3:.3g} ms, "
    f"{r['tokens_per_sec']:,.0f} tokens/s, MFU {r['mfu']:.1%} (compiled in {plan['compile_seconds']:.0f} s)",
    file=out,
    flush=True,
  )


def generation(accelerator_type: str) -> str:
  """'v4-32' -> 'v4'; refuses types this launcher does not know."""
  m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
  if not m or int(m.group(2)) <= 0:
    raise LaunchError(
      f"accelerator type {accelerator_type!r} is not one of {', '.join(RUNTIME_VERSIONS)} "
      "followed by -<size> (e.g. v4-32, v5p-128, v5litepod-16, v6e-64)"
    )
  gen, size = m.group(1), int(m.group(2))
  if gen in ("v2", "v3", "v4", "v5p") and size % 8:
    raise LaunchError(
      f"accelerator type {accelerator_type!r}: {gen} slices come in multiples of 8 TensorCores"
    )
  return gen


def config_steps(train_args: Sequence[str]) -> int:
  """train.steps of the run: the last --config.train.steps=N, else the config file's."""
  override, config = None, None
  for arg in train_args:
    if arg.startswith("--config.train.steps="):
      override = arg.split("=", 1)[1]
    elif arg.startswith("--config="):
      config = arg.split("=", 1)[1]
  if override is not None:
    try:
      return int(override.replace("_", ""))
    except ValueError:
      raise LaunchError(f"--config.train.steps={override} is not an integer") from None
  if config is None:
    raise LaunchError("the train flags after -- need --config=<file>")
  path, _, arg = config.partition(":")
  if not os.path.isfile(path):
    raise LaunchError(
      f"config file {path} does not exist (paths are relative to where you run this)"
    )
  sys.path.insert(0, REPO)  # Config files import pretrain.
  spec = importlib.util.spec_from_file_location("launch_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return int((module.get_config(arg) if arg else module.get_config()).train.steps)


def pack_command(tarball: str) -> str:
  """Packs this checkout's files, tracked and untracked but not ignored (no .venv, no runs)."""
  return (
    f"git -C {shlex.quote(REPO)} ls-files -z --cached --others --exclude-standard | "
    f"tar -czf {shlex.quote(tarball)} -C {shlex.quote(REPO)} --null -T -"
  )


@dataclasses.dataclass
class TpuRun:
  """One training run on one TPU slice."""

  name: str
  zone: str
  accelerator_type: str
  workdir: str
  train_args: list[str]
  steps: int
  project: str | None = None
  runtime_version: str | None = None
  queued: bool = False
  spot: bool = False
  git_url: str | None = None
  git_ref: str = "main"
  max_restarts: int = 20
  poll_s: float = 60.0
  ready_timeout_s: float = 6 * 3600.0
  keep: bool = False
  sh: Callable[..., Result] = dataclasses.field(default_factory=lambda: Shell(dry_run=False))

  def __post_init__(self):
    self.runtime_version = (
      self.runtime_version or RUNTIME_VERSIONS[generation(self.accelerator_type)]
    )
    if not self.workdir.startswith("gs://"):
      raise LaunchError(
        f"--workdir={self.workdir} must be a gs:// path: every worker writes to it and the "
        "launcher reads the checkpoint steps from it"
      )
    self.kind = "queued" if self.queued else "vm"

  # Commands.

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

  def _tpus(self, *args: str) -> list[str]:
    group = (
      "queued-resources"
      if self.queued and args[0] in ("create", "describe", "delete")
      else "tpu-vm"
    )
    return ["gcloud", "compute", "tpus", group, *args, *self._where()]

  def _ssh(self, command: str) -> list[str]:
    return self._tpus("ssh", self.name, "--worker=all", f"--command={command}")

  def create_command(self) -> list[str]:
    spot = ["--spot"] if self.spot else []
    if self.queued:
      return self._tpus(
        "create",
        self.name,
        f"--node-id={self.name}",
        f"--accelerator-type={self.accelerator_type}",
        f"--runtime-version={self.runtime_version}",
        *spot,
      )
    return self._tpus(
      "create",
      self.name,
      f"--accelerator-type={self.accelerator_type}",
      f"--version={self.runtime_version}",
      *spot,
    )

  def state_command(self) -> list[str]:
    return self._tpus(
      "describe",
      self.name,
      "--format=value(state.state)" if self.queued else "--format=value(state)",
    )

  def delete_command(self) -> list[str]:
    return self._tpus("delete", self.name, *(["--force"] if self.queued else []), "--quiet")

  def train_command(self) -> str:
    """What every worker runs; its pid is kept so that a relaunch can stop a leftover process first."""
    args = " ".join(shlex.quote(a) for a in [*self.train_args, f"--workdir={self.workdir}"])
    return (
      f"cd {REMOTE_DIR} && echo $$ > {PID_FILE} && "
      f'export LIBTPU_INIT_ARGS="{TPU_COMPILER_FLAGS} ${{LIBTPU_INIT_ARGS:-}}" && '
      f"exec python3 -m pretrain.train {args}"
    )

  def stop_leftover_command(self) -> str:
    return (
      f"if [ -f {PID_FILE} ]; then p=$(cat {PID_FILE}); kill -TERM $p 2>/dev/null; "
      "for i in $(seq 60); do kill -0 $p 2>/dev/null || break; sleep 1; done; "
      f"kill -KILL $p 2>/dev/null; rm -f {PID_FILE}; fi; true"
    )

  def checkpoints_command(self) -> list[str]:
    return ["gcloud", "storage", "ls", f"{self.workdir.rstrip('/')}/checkpoints/*/{COMMIT_FILE}"]

  # Steps.

  def state(self, dry_answer: str | None = None) -> str:
    """READY/ACTIVE, a state on the way there, or PREEMPTED, SUSPENDED, ...; NOT_FOUND if there is no TPU."""
    r = self.sh(
      self.state_command(),
      capture=True,
      check=False,
      dry_answer=_READY[self.kind] if dry_answer is None else dry_answer,
    )
    return (r.stdout.strip() or "NOT_FOUND") if r.returncode == 0 else "NOT_FOUND"

  def create(self) -> None:
    self.sh(self.create_command())
    deadline = time.monotonic() + self.ready_timeout_s
    while (state := self.state()) != _READY[self.kind]:
      if state not in _PENDING[self.kind] or time.monotonic() > deadline:
        raise LaunchError(
          f"TPU {self.name} is {state}, not {_READY[self.kind]}"
          + (" after waiting" if state in _PENDING[self.kind] else "")
        )
      self.sh.sleep(self.poll_s)

  def setup(self) -> None:
    """The code and its dependencies on every worker."""
    if self.git_url:
      self.sh(
        self._ssh(
          f"rm -rf {REMOTE_DIR} && git clone --quiet {shlex.quote(self.git_url)} {REMOTE_DIR} && "
          f"git -C {REMOTE_DIR} checkout --quiet {shlex.quote(self.git_ref)}"
        )
      )
    else:
      tarball = os.path.join(tempfile.gettempdir(), f"pretrain-{self.name}.tar.gz")
      self.sh(pack_command(tarball))
      self.sh(self._tpus("scp", tarball, f"{self.name}:pretrain.tar.gz", "--worker=all"))
      self.sh(
        self._ssh(
          f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && "
          f"tar -xzf ~/pretrain.tar.gz -C {REMOTE_DIR}"
        )
      )
    packages = " ".join(shlex.quote(p) for p in PIP_PACKAGES)
    self.sh(
      self._ssh(
        f"python3 -m pip install --quiet --upgrade pip && "
        f"python3 -m pip install --quiet -e {REMOTE_DIR} {packages}"
      )
    )

  def final_step(self, dry_run_finished: bool = True) -> int | None:
    """The newest committed checkpoint step in the workdir, or None when there is none."""
    finished = f"{self.workdir.rstrip('/')}/checkpoints/{self.steps}/{COMMIT_FILE}\n"
    r = self.sh(
      self.checkpoints_command(),
      capture=True,
      check=False,
      dry_answer=finished if dry_run_finished else "",
    )
    steps = [
      int(m.group(1))
      for line in r.stdout.splitlines()
      if (m := re.search(rf"/checkpoints/(\d+)/{COMMIT_FILE}$", line.strip()))
    ]
    return max(steps) if r.returncode == 0 and steps else None

  def run(self) -> int:
    """Creates, sets up, trains until the final checkpoint exists, deletes; returns the restarts used."""
    restarts = 0
    try:
      if self.final_step(dry_run_finished=False) == self.steps:
        print(
          f"{self.workdir} already holds the final step {self.steps}; nothing to do.", flush=True
        )
        return 0
      if (
        self.state(dry_answer="") != _READY[self.kind]
      ):  # A TPU of this name left READY is used as it is.
        self.create()
      self.setup()
      while True:
        self.sh(self._ssh(self.stop_leftover_command()), check=False)
        result = self.sh(self._ssh(self.train_command()), check=False)
        step = self.final_step()
        if step == self.steps:
          print(
            f"run finished: {self.workdir} holds step {step} (restarts: {restarts})", flush=True
          )
          return restarts
        if restarts >= self.max_restarts:
          raise LaunchError(
            f"the run stopped at checkpoint step {step} of {self.steps} after {restarts} "
            "restarts (--max_restarts); see the output above"
          )
        restarts += 1
        state = self.state()
        print(
          f"training ended (status {result.returncode}) at checkpoint step {step} of {self.steps}; "
          f"TPU {self.name} is {state}; relaunching (restart {restarts})",
          flush=True,
        )
        if state != _READY[self.kind]:  # Preempted, or gone: a new TPU, set up from scratch.
          self.sh(self.delete_command(), check=False)
          self.create()
          self.setup()
        else:
          self.sh.sleep(
            min(self.poll_s, 30.0)
          )  # A crash or a dropped connection: the same TPU again.
    finally:
      if not self.keep:
        self.sh(self.delete_command(), check=False)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    usage="python launch/tpu.py --name=N --zone=Z --accelerator_type=T --workdir=gs://... [options] -- "
    "--config=configs/<name>.py [train flags]",
  )
  parser.add_argument("--name", required=True, help="TPU (and queued resource) name")
  parser.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-east5-a (v5p)")
  parser.add_argument(
    "--accelerator_type", required=True, help="e.g. v4-8, v4-32, v5p-128, v5litepod-16"
  )
  parser.add_argument("--workdir", required=True, help="gs:// path for checkpoints and metrics")
  parser.add_argument("--project", default=None)
  parser.add_argument(
    "--runtime_version",
    default=None,
    help="TPU software version (default per generation: "
    + ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items())
    + ")",
  )
  parser.add_argument(
    "--queued", action="store_true", help="ask for the slice as a queued resource"
  )
  parser.add_argument("--spot", action="store_true", help="spot capacity: cheaper, preemptible")
  parser.add_argument(
    "--git_url", default=None, help="clone this on the workers instead of copying this checkout"
  )
  parser.add_argument("--git_ref", default="main")
  parser.add_argument(
    "--steps", type=int, default=None, help="train.steps (default: read from the config)"
  )
  parser.add_argument("--max_restarts", type=int, default=20)
  parser.add_argument("--poll_s", type=float, default=60.0)
  parser.add_argument("--keep", action="store_true", help="do not delete the TPU at the end")
  parser.add_argument(
    "--dry_run", action="store_true", help="print every command instead of running it"
  )
  parser.add_argument(
    "--skip_preflight",
    action="store_true",
    help="launch without compiling the train step for the slice first (python -m pretrain.plan)",
  )
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args, train_args = parser.parse_args(argv[:split]), argv[split + 1 :]
  if any(a.startswith("--workdir") for a in train_args):
    parser.error("give --workdir to the launcher (before --), not to the train flags")
  try:
    run = TpuRun(
      args.name,
      args.zone,
      args.accelerator_type,
      args.workdir,
      train_args,
      args.steps if args.steps is not None else config_steps(train_args),
      project=args.project,
      runtime_version=args.runtime_version,
      queued=args.queued,
      spot=args.spot,
      git_url=args.git_url,
      git_ref=args.git_ref,
      max_restarts=args.max_restarts,
      poll_s=args.poll_s,
      keep=args.keep,
      sh=Shell(args.dry_run),
    )
    if not args.skip_preflight:  # Before any TPU resource exists.
      preflight(args.accelerator_type, train_args)
    run.run()
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
