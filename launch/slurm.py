"""A run on a SLURM GPU cluster: writes an sbatch script and submits it.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \\
      --venv=$HOME/venvs/pretrain [--dry_run] \\
      -- --config=configs/bert_base.py --workdir=/shared/runs/bert_base

The script `srun`s one `python -m pretrain.train` per GPU (`--tasks=per_gpu`,
the default) or per node (`--tasks=per_node`, each process drives all of its
node's GPUs). Each process finds its place from SLURM's variables
(pretrain/distributed.py: SLURM_NTASKS, SLURM_PROCID, the first host of the
node list as coordinator). SLURM sends SIGTERM two minutes before the time
limit (or on preemption), the train loop saves a checkpoint and exits, and the
job is requeued when preempted; submitting the same script again resumes the
run from its last checkpoint. The workdir must be on a file system every node
sees. `--dry_run` prints the script and the sbatch command instead.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sbatch_script(
  train_args: Sequence[str],
  *,
  nodes: int,
  gpus_per_node: int,
  tasks: str = "per_gpu",
  job_name: str = "pretrain",
  time_limit: str = "24:00:00",
  partition: str | None = None,
  account: str | None = None,
  cpus_per_task: int | None = None,
  venv: str | None = None,
  repo: str = REPO,
  output: str = "%x-%j.out",
  coordinator_port: int | None = None,
  signal_s: int = 120,
) -> str:
  """The text of the sbatch script."""
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"--nodes={nodes} and --gpus_per_node={gpus_per_node} must be at least 1")
  if tasks not in ("per_gpu", "per_node"):
    raise ValueError(f"--tasks={tasks!r} must be per_gpu or per_node")
  if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", time_limit):
    raise ValueError(f"--time={time_limit!r} is not a SLURM time (e.g. 24:00:00 or 2-00:00:00)")
  tasks_per_node = gpus_per_node if tasks == "per_gpu" else 1
  processes = nodes * tasks_per_node
  directives = [
    f"--job-name={job_name}",
    f"--nodes={nodes}",
    f"--ntasks-per-node={tasks_per_node}",
    f"--gpus-per-node={gpus_per_node}",
    *([f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []),
    f"--time={time_limit}",
    *([f"--partition={partition}"] if partition else []),
    *([f"--account={account}"] if account else []),
    f"--output={output}",
    "--open-mode=append",  # A requeued job adds to the same log.
    f"--signal=TERM@{signal_s}",  # The train loop saves a checkpoint on SIGTERM.
    "--requeue",
  ]
  train = [
    "python",
    "-m",
    "pretrain.train",
    *train_args,
    *([f"--coordinator_port={coordinator_port}"] if coordinator_port else []),
  ]
  lines = [
    "#!/bin/bash",
    f"# pretrain on {nodes} node(s) x {gpus_per_node} GPU(s): {processes} process(es), one per "
    f"{'GPU' if tasks == 'per_gpu' else 'node'}. Written by launch/slurm.py.",
    *(f"#SBATCH {d}" for d in directives),
    "",
    "set -euo pipefail",
    f"cd {shlex.quote(repo)}",
    *([f"source {shlex.quote(os.path.join(venv, 'bin', 'activate'))}"] if venv else []),
    "export PYTHONUNBUFFERED=1",
    "",
    "# Each task reads SLURM_NTASKS / SLURM_PROCID / SLURM_STEP_NODELIST (pretrain/distributed.py).",
    f"srun --kill-on-bad-exit=1 {shlex.join(train)}",
    "",
  ]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    usage="python launch/slurm.py --nodes=N --gpus_per_node=G [options] -- --config=... --workdir=...",
  )
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, required=True)
  parser.add_argument(
    "--tasks",
    choices=("per_gpu", "per_node"),
    default="per_gpu",
    help="one process per GPU (default) or per node",
  )
  parser.add_argument("--job_name", default="pretrain")
  parser.add_argument("--time", default="24:00:00", help="time limit, e.g. 24:00:00 or 2-00:00:00")
  parser.add_argument("--partition", default=None)
  parser.add_argument("--account", default=None)
  parser.add_argument("--cpus_per_task", type=int, default=None)
  parser.add_argument("--venv", default=None, help="virtual environment to activate on every node")
  parser.add_argument("--output", default="%x-%j.out", help="SLURM log file pattern")
  parser.add_argument(
    "--coordinator_port",
    type=int,
    default=None,
    help="coordinator port on the first node (default: derived from the job id)",
  )
  parser.add_argument(
    "--script", default=None, help="where to write the script (default: <job_name>.sbatch)"
  )
  parser.add_argument(
    "--dry_run", action="store_true", help="print the script and the sbatch command only"
  )
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args, train_args = parser.parse_args(argv[:split]), argv[split + 1 :]
  if not any(a.startswith("--config=") for a in train_args) or not any(
    a.startswith("--workdir=") for a in train_args
  ):
    parser.error("the train flags after -- need --config=<file> and --workdir=<shared directory>")
  try:
    script = sbatch_script(
      train_args,
      nodes=args.nodes,
      gpus_per_node=args.gpus_per_node,
      tasks=args.tasks,
      job_name=args.job_name,
      time_limit=args.time,
      partition=args.partition,
      account=args.account,
      cpus_per_task=args.cpus_per_task,
      venv=args.venv,
      output=args.output,
      coordinator_port=args.coordinator_port,
    )
  except ValueError as e:
    parser.error(str(e))
  path = args.script or f"{args.job_name}.sbatch"
  if args.dry_run:
    print(script)
    print(f"+ sbatch {shlex.quote(path)}")
    return 0
  with open(path, "w", encoding="utf-8") as f:
    f.write(script)
  print(f"wrote {path}")
  return subprocess.run(["sbatch", path], check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
