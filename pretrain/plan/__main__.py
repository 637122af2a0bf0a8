"""python -m pretrain.plan --config=configs/bert_base.py --target=tpu:v5p-128 [--json_out=F] [--search]

Compiles the run's own train step for a TPU slice or a GPU cluster on this machine (no accelerator,
no corpus) and prints per device: memory against the HBM, FLOPs, collectives and a roofline step
time with tokens/s and MFU; a run in phases (train.phases) is planned phase by phase. Each compile
runs in a child process (pretrain.plan.isolate), so a compiler crash is reported, not suffered.
`--search` compiles remat policies x mesh splits, each at the fewest microbatches that fit,
`--search_workers` at a time, and prints the fitting ones fastest first as overrides to paste. Config
overrides (`--config.mesh.fsdp=-1`) apply as in pretrain.train. Exit status: 0 fits (every phase),
1 does not fit (or nothing found by --search), 2 bad input, 3 the compiler crashed (no plan, and
no phase known not to fit).
"""

import json
import sys

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT, EXIT_COMPILER_CRASHED = 0, 1, 2, 3

from absl import app
from absl import flags
from ml_collections import config_flags

from pretrain import cli
from pretrain.errors import PretrainError


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.DEFINE_string(
    "target", None, "tpu:v4-32, tpu:v5p-128, tpu:v5e-256, tpu:2xv5e-256, gpu:h100x16, ..."
  )
  flags.DEFINE_string(
    "json_out", "", "Write the plan (or the search's plans) as JSON here ('-': stdout)."
  )
  flags.DEFINE_bool(
    "search", False, "Search remat x microbatches x mesh split for the fastest fit."
  )
  flags.DEFINE_integer("search_limit", 12, "Most compiles a search makes.")
  flags.DEFINE_integer(
    "search_workers", 0, "Compiles at once, a child process each (0: by cores and free memory)."
  )
  flags.DEFINE_float("hbm_limit_gib", 0.0, "Memory a device may use (0: the chip's HBM; GPU: 75%).")


def _parse(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag an `error:` line and exit 2 as every other bad input."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _write_json(path: str, value) -> None:
  if path == "-":
    print(json.dumps(value))
  elif path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(value, f, indent=1)


def run(
  config,
  target_name: str,
  *,
  json_out: str = "",
  search: bool = False,
  limit: int = 12,
  workers: int = 0,
  hbm_limit_gib: float = 0.0,
) -> int:
  """The CLI's work: prints the plan (or the search), writes the JSON; the exit status."""
  from pretrain.plan import compile as compile_lib  # pylint: disable=import-outside-toplevel
  from pretrain.plan import isolate  # pylint: disable=import-outside-toplevel
  from pretrain.plan import phased  # pylint: disable=import-outside-toplevel
  from pretrain.plan import report  # pylint: disable=import-outside-toplevel
  from pretrain.plan import search as search_lib  # pylint: disable=import-outside-toplevel
  from pretrain.plan import targets  # pylint: disable=import-outside-toplevel

  target = targets.parse(target_name)
  if hbm_limit_gib < 0:
    raise PretrainError(f"--hbm_limit_gib={hbm_limit_gib} must be 0 (the chip's) or positive")
  if workers < 0:
    raise PretrainError(f"--search_workers={workers} must be 0 (by cores and memory) or positive")
  limit_bytes = hbm_limit_gib * 2**30 or None
  if search:
    workers = workers or search_lib.default_workers()
    results = search_lib.search(
      config,
      target,
      limit=limit,
      workers=workers,
      hbm_limit_bytes=limit_bytes,
      on_result=lambda p: print(report.format_candidate(p), flush=True),
    )
    print(report.format_search(results, f"at most {limit}, {workers} at a time"))
    _write_json(json_out, results)
    return EXIT_FITS if any(r["fits"] for r in results) else EXIT_DOES_NOT_FIT
  missing = compile_lib.aot_missing(target.platform)
  if missing:
    raise PretrainError(missing)
  plan = phased.plan(config, target.name, limit_bytes, plan_one=isolate.plan)
  print(report.format_plan(plan))
  _write_json(json_out, plan)
  if plan["fits"]:
    return EXIT_FITS
  if "refusal" in plan:
    return EXIT_DOES_NOT_FIT
  print(f"error: {plan['crash']} compiling the step for {target.name}", file=sys.stderr)
  return EXIT_COMPILER_CRASHED


def main(argv) -> None:
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  try:
    if not f.target:
      raise PretrainError("--target is required, e.g. --target=tpu:v5p-128 or --target=gpu:h100x8")
    try:
      config = f.config
      if config is None:
        raise PretrainError("--config is required, e.g. --config=configs/bert_base.py")
      config.task  # pylint: disable=pointless-statement  (a config file that failed to load raises here)
    except (
      OSError,
      AttributeError,
    ) as e:  # config_flags' own report: its last line names the cause.
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      raise PretrainError(f"--config: {lines[-1] if lines else type(e).__name__}") from None
    code = run(
      config,
      f.target,
      json_out=f.json_out,
      search=f.search,
      limit=f.search_limit,
      workers=f.search_workers,
      hbm_limit_gib=f.hbm_limit_gib,
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    code = EXIT_BAD_INPUT
  sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_parse)
