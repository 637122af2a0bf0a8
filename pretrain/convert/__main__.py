"""`python -m pretrain.convert from-hf|to-hf`: see pretrain/convert/__init__.py."""

import argparse
import json
import logging
import sys

from pretrain import convert
from pretrain.errors import PretrainError


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m pretrain.convert", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  from_hf = commands.add_parser(
    "from-hf", help="HF folder (config.json + model.safetensors) -> converted folder"
  )
  from_hf.add_argument("--hf_dir", required=True, help="Local HF model folder.")
  from_hf.add_argument(
    "--out", required=True, help="New folder for params/, config.json, config.py, convert.json."
  )
  from_hf.add_argument(
    "--allow_pickle",
    action="store_true",
    help="Read pytorch_model.bin (with torch.load(weights_only=True)) when there is no safetensors.",
  )
  from_hf.add_argument(
    "--scan_layers", action="store_true", help="Write the layers stacked (model.scan_layers)."
  )
  to_hf = commands.add_parser("to-hf", help="Converted folder or training workdir -> HF folder")
  to_hf.add_argument(
    "--ckpt", required=True, help="A converted folder, or a training workdir (or step folder)."
  )
  to_hf.add_argument("--out", required=True, help="New folder for config.json + model.safetensors.")
  to_hf.add_argument(
    "--step", type=int, default=None, help="Step of a training workdir (default: the newest)."
  )
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    if args.command == "from-hf":
      source = convert.from_hf(
        args.hf_dir, args.out, allow_pickle=args.allow_pickle, scan_layers=args.scan_layers
      )
      summary = {
        "out": args.out,
        "architecture": source["architecture"],
        "initialized_fresh": source["initialized_fresh"],
      }
    else:
      hf_config = convert.to_hf(args.ckpt, args.out, step=args.step)
      summary = {"out": args.out, "architecture": hf_config["architectures"][0]}
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
