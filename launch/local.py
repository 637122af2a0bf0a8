"""A multi-process run on this machine: N processes of `python -m pretrain.train`, K CPU devices each.

  python launch/local.py -n 2 --devices_per_process 4 -- \\
      --config=configs/bert_tiny.py --workdir=runs/bert_tiny_2x4

The same code path as a multi-host pod (jax.distributed over a coordinator,
collectives between processes, each process reading only its rows of the
batch), rehearsed over loopback: process 0 runs the coordinator on a free
port, CPU collectives go over gloo. Process 0's output is passed through as it
is, the others' is prefixed with `[i] `. SIGTERM/SIGINT reach every process as
SIGTERM (the processes agree on a step, save it and exit); if any process fails,
the rest are stopped and the launcher exits with the failed process's status.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of one process: CPU platform with `devices` fake devices, unbuffered output."""
  env = dict(os.environ if base is None else base)
  if devices:
    xla = [
      f
      for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(xla + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  return env


def train_commands(
  num_processes: int, train_args: Sequence[str], port: int, module: str = "pretrain.train"
) -> list[list[str]]:
  """One `python -m pretrain.train ...` per process, each told its place in the run."""
  return [
    [
      sys.executable,
      "-m",
      module,
      *train_args,
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
    ]
    for i in range(num_processes)
  ]


def _pump(src: IO[bytes], dst: IO[str], prefix: str) -> None:
  for raw in iter(src.readline, b""):
    line = raw.decode("utf-8", "replace")
    dst.write(prefix + line if prefix else line)
    dst.flush()
  src.close()


def _exit_status(returncode: int) -> int:
  return (
    128 - returncode if returncode < 0 else returncode
  )  # Killed by signal N: 128 + N, as a shell says.


def run(
  commands: Sequence[Sequence[str]],
  env: dict[str, str],
  *,
  kill_grace_s: float = 10.0,
  stdout: IO[str] = sys.stdout,
  stderr: IO[str] = sys.stderr,
) -> int:
  """Runs the processes to the end; returns 0, or the status of the first one that failed.

  A process that fails makes the launcher stop the rest: SIGTERM, then SIGKILL
  after `kill_grace_s` (a process blocked in a collective never gets to its
  SIGTERM handler). SIGTERM/SIGINT sent to the launcher go to every process as
  SIGTERM; a second one kills them.
  """
  procs: list[subprocess.Popen] = []
  received: list[int] = []

  def forward(signum, _):
    received.append(signum)
    for p in procs:
      if p.poll() is None:
        try:
          # The first Ctrl-C or SIGTERM reaches the processes as SIGTERM, on which they agree on a step,
          # save it and exit; a second one kills them.
          os.killpg(p.pid, signal.SIGTERM if len(received) == 1 else signal.SIGKILL)
        except ProcessLookupError:
          pass

  # Before the processes start: a signal that arrives once they run must reach them, not end the launcher.
  on_main_thread = threading.current_thread() is threading.main_thread()
  previous = {}
  if on_main_thread:
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  for cmd in commands:
    procs.append(
      subprocess.Popen(
        list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
      )
    )  # Signals reach them only through here.
  pumps = []
  for i, p in enumerate(procs):
    prefix = f"[{i}] " if i else ""
    for src, dst in ((p.stdout, stdout), (p.stderr, stderr)):
      t = threading.Thread(target=_pump, args=(src, dst, prefix), daemon=True)
      t.start()
      pumps.append(t)
  status = 0
  try:
    kill_at = None
    while None in [p.poll() for p in procs]:  # Polls every process (any() would stop at the first).
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed and not status:
        status = _exit_status(failed[0].returncode)
        stderr.write(
          f"launch/local.py: process {procs.index(failed[0])} exited with status {status}; "
          "stopping the others\n"
        )
        for p in procs:
          if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        kill_at = time.monotonic() + kill_grace_s
      if kill_at is not None and time.monotonic() > kill_at:
        for p in procs:
          if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        kill_at = None
      time.sleep(0.05)
    failed = [p for p in procs if p.returncode != 0]
    if failed and not status:  # They all ended between two polls.
      status = _exit_status(failed[0].returncode)
      stderr.write(
        f"launch/local.py: process {procs.index(failed[0])} exited with status {status}\n"
      )
  finally:
    for p in procs:  # Only reached with live processes if the launcher itself failed.
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for t in pumps:
      t.join(timeout=5)
    for s, h in previous.items():
      signal.signal(s, h)
  return status


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    usage="python launch/local.py -n N [--devices_per_process K] -- --config=... --workdir=... [train flags]",
  )
  parser.add_argument("-n", "--num_processes", type=int, required=True)
  parser.add_argument(
    "--devices_per_process",
    type=int,
    default=None,
    help="fake CPU devices per process (XLA_FLAGS=--xla_force_host_platform_device_count)",
  )
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--kill_grace_s", type=float, default=10.0)
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args, train_args = parser.parse_args(argv[:split]), argv[split + 1 :]
  if args.num_processes < 1:
    parser.error(f"-n must be at least 1, got {args.num_processes}")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error(f"--devices_per_process must be at least 1, got {args.devices_per_process}")
  clash = [a for a in train_args if a.split("=")[0] in _OWN_FLAGS]
  if clash:
    parser.error(f"{clash[0]} is set by the launcher; leave it out")
  commands = train_commands(args.num_processes, train_args, args.port or free_port())
  return run(commands, process_env(args.devices_per_process), kill_grace_s=args.kill_grace_s)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
