"""`python -m pretrain.evaluate perplexity|lm-eval`: see pretrain/evaluate/__init__.py."""

import argparse
import json
import sys

from pretrain import cli
from pretrain.errors import PretrainError


def _perplexity_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m pretrain.evaluate perplexity",
    description="Token- and word-level perplexity of a text, with strided sliding windows.",
  )
  parser.add_argument(
    "--init_from", required=True, help="A training workdir or a converted folder (from-hf)."
  )
  parser.add_argument("--text", required=True, help="A UTF-8 text file, encoded whole.")
  parser.add_argument("--step", type=int, default=None, help="A workdir's checkpoint step.")
  parser.add_argument(
    "--max_length", type=int, default=None, help="Window length (default: the model's positions)."
  )
  parser.add_argument(
    "--stride", type=int, default=None, help="Tokens between window starts (default: half)."
  )
  parser.add_argument("--batch_size", type=int, default=8, help="Windows per forward pass.")
  parser.add_argument("--dtype", default="float32", help="Compute dtype (float32, bfloat16).")
  return parser


def perplexity_main(argv: list[str]) -> int:
  args = _perplexity_parser().parse_args(argv)
  # Imported here: jax starts only for a command that runs a model.
  from pretrain.evaluate import perplexity  # pylint: disable=import-outside-toplevel
  from pretrain.evaluate import scoring  # pylint: disable=import-outside-toplevel

  try:
    text = perplexity.read_text(args.text)
    if args.max_length is not None and args.stride is not None:  # Before the model loads.
      perplexity.check_window(args.max_length, args.stride)
    scorer, tokenizer = scoring.load_scorer(
      args.init_from, batch_size=args.batch_size, step=args.step, dtype=args.dtype
    )
    result = perplexity.text_perplexity(
      scorer, tokenizer, text, max_length=args.max_length, stride=args.stride
    )
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"init_from": args.init_from, "text": args.text, **result.row()}))
  return 0


def lm_eval_main(argv: list[str]) -> int:
  """The harness's own command line, with the `pretrain` model registered."""
  try:
    from pretrain.evaluate import harness  # noqa: F401  # Registers the model.  # pylint: disable=import-outside-toplevel
    from lm_eval import __main__ as lm_eval_cli  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    print(f"error: {e.name} is not installed: pip install -e '.[eval]'", file=sys.stderr)
    return 2
  argv_before, sys.argv = sys.argv, ["lm_eval", *argv]  # The harness parses sys.argv itself.
  try:
    lm_eval_cli.cli_evaluate()
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    sys.argv = argv_before
  return 0


COMMANDS = {"perplexity": perplexity_main, "lm-eval": lm_eval_main}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  cli.quiet_library_logs()
  if not argv or argv[0] not in COMMANDS:
    print(
      f"usage: python -m pretrain.evaluate {{{','.join(COMMANDS)}}} ...; see --help of each",
      file=sys.stderr,
    )
    return 2
  return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
  sys.exit(main())
