"""The command line: the report's command leaves out the flags that only select jobs."""

from pretrain.ablate import __main__ as cli


def test_sweep_command_drops_job_selection_flags():
  argv = [
    "--config=configs/ablations/attention.py",
    "--workdir=runs/a",
    "--variant",
    "gqa",
    "--seed=1",
    "--report_only",
    "--config.seeds=5",
  ]
  assert cli.sweep_command(argv) == (
    "python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=runs/a "
    "--config.seeds=5"
  )
  assert cli.sweep_command(["--seed", "2", "--noreport_only", "--workdir=w"]) == (
    "python -m pretrain.ablate --workdir=w"
  )
