"""Prepares a token store once: the configured corpus, tokenized, in shards, for any number of runs.

  python -m pretrain.prepare --config=configs/bert_tiny.py --out=DIR [--num_workers=N] [--unit_mb=64]
  python -m pretrain.prepare --config=configs/bert_base.py --config.data.source=text \\
      --config.data.paths='/data/wiki/*.txt' --out=gs://bucket/wiki --runner=beam -- --runner=DataflowRunner ...

The tokenizer is tokenizer.path, else the one cached for this corpus, else trained first on a
bounded sample. Killed, it resumes where it stopped when run again with the same arguments; a
finished store is left untouched. Train on it with --config.data.source=prepared
--config.data.paths=DIR. Prints one summary line; on bad input, `error: ...` and exit status 2.
"""

import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from pretrain import cli
from pretrain.data import prepare as prepare_lib
from pretrain.errors import PretrainError


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/bert_tiny.py.", lock_config=True
  )
  flags.DEFINE_string("out", None, "The store's folder or gs:// URL.")
  flags.DEFINE_integer("num_workers", None, "Local worker processes (default: all cores).")
  flags.DEFINE_float(
    "unit_mb", prepare_lib.DEFAULT_UNIT_BYTES / 2**20, "Input MB per unit (= per shard)."
  )
  flags.DEFINE_enum(
    "runner", "local", prepare_lib.RUNNERS, "local processes, or Apache Beam (args after --)."
  )


def summary(store, seconds: float) -> str:
  parts = []
  for split in ("train", "heldout"):
    t = store.totals(split)
    parts.append(
      f"{split} {t['num_docs']:,} docs / {t['num_sentences']:,} sentences / {t['num_tokens']:,} "
      f"tokens in {t['num_shards']} shard(s)"
    )
  mb = sum(s["size"] for s in store.manifest["sources"]) / 2**20
  tokens = sum(store.totals(s)["num_tokens"] for s in ("train", "heldout"))
  source = store.manifest["corpus"]["source"]
  size = f"{mb:,.1f} MB of {source} input" if store.manifest["sources"] else f"the {source} corpus"
  rate = f"{mb / seconds:.1f} MB/s, " if store.manifest["sources"] else ""
  return (
    f"{store.path}: "
    + "; ".join(parts)
    + f"; {size} in {seconds:.1f} s ({rate}{tokens / seconds:,.0f} "
    "tokens/s)"
  )


def run(
  config, out: str, num_workers: int | None, unit_mb: float, runner: str, pipeline_args: list[str]
) -> str:
  """Resolves the tokenizer, prepares the store; the summary line."""
  start = time.monotonic()
  if unit_mb <= 0:
    raise PretrainError(f"--unit_mb={unit_mb:g} must be positive")
  if pipeline_args and runner != "beam":
    raise PretrainError(
      f"unexpected arguments {' '.join(pipeline_args)}: pipeline arguments (after --) "
      "are for --runner=beam"
    )
  tokenizer = prepare_lib.resolve_tokenizer(config.data, config.tokenizer)
  store = prepare_lib.prepare(
    config.data,
    tokenizer,
    out,
    num_workers=num_workers,
    unit_bytes=max(1, int(unit_mb * 2**20)),
    runner=runner,
    pipeline_args=pipeline_args,
  )
  return summary(store, max(time.monotonic() - start, 1e-9))


def main(argv: list[str]) -> None:
  cli.quiet_library_logs()
  f = flags.FLAGS
  if f.config is None or not f.out:
    print("error: --config and --out are required", file=sys.stderr)
    sys.exit(2)
  try:
    line = run(f.config, f.out, f.num_workers, f.unit_mb, f.runner, list(argv[1:]))
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
