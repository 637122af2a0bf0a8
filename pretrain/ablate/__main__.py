"""`python -m pretrain.ablate`: runs a sweep (or some of its jobs) and prints its report."""

import sys

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from pretrain import cli
from pretrain.ablate import runner
from pretrain.errors import PretrainError

# Flags of how this invocation gathers the sweep, not of the sweep: left out of the report's command.
_SELECTION_FLAGS = ("variant", "seed", "report_only", "noreport_only")


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file(
    "config", None, "Sweep config, e.g. configs/ablations/attention.py.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Sweep directory: one folder per variant plus the report.")
  flags.DEFINE_list("variant", [], "Run only these variants (others are reported if finished).")
  flags.DEFINE_list("seed", [], "Run only these seed indices (0 .. seeds - 1) of the variants.")
  flags.DEFINE_bool("report_only", False, "Train nothing; write the report from what has finished.")


def sweep_command(argv: list[str]) -> str:
  """The command that trains the sweep: argv without the flags that select jobs."""
  args, skip_value = [], False
  for a in argv:
    name = a.lstrip("-").split("=")[0]
    if skip_value:
      skip_value = False
    elif name in _SELECTION_FLAGS:
      skip_value = "=" not in a and name in ("variant", "seed")
    else:
      args.append(a)
  return " ".join(["python -m pretrain.ablate"] + args)


def main(argv):
  del argv
  cli.quiet_library_logs()
  fl = flags.FLAGS
  if fl.config is None or not fl.workdir:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  try:
    seeds = [int(k) for k in fl.seed]
  except ValueError:
    print(f"error: --seed={','.join(fl.seed)}: give seed indices (integers)", file=sys.stderr)
    sys.exit(2)
  try:
    rows = runner.run_sweep(
      fl.config,
      fl.workdir,
      only=fl.variant,
      seeds=seeds,
      report_only=fl.report_only,
      command=sweep_command(sys.argv[1:]),
      log=lambda s: print(s, file=sys.stderr, flush=True),
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print((epath.Path(fl.workdir) / "report.md").read_text(encoding="utf-8"))
  selected = [
    r
    for r in rows
    if (not fl.variant or r["variant"] in fl.variant) and (not seeds or r["seed"] in seeds)
  ]
  if not fl.report_only and any(r["status"] != "done" for r in selected):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
