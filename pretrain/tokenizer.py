"""Trains a SentencePiece tokenizer on (a bounded sample of) the configured corpus, or checks a given one.

  python -m pretrain.tokenizer --config=configs/bert_tiny.py \
      [--config.tokenizer.vocab_size=8192] [--out=PATH]
  python -m pretrain.tokenizer --config=configs/bert_tiny.py --config.tokenizer.path=HF_DIR/vocab.txt

Without --out the model goes where training would cache it (and where
`tokenizer.path=''` finds it); an existing cached model is reused. With
tokenizer.path set, nothing is trained: that tokenizer (sentencepiece, HF
tokenizer.json or vocab.txt) is opened as a run would open it. Either way it
prints the vocabulary size, the special token ids the tasks will use and the
pieces of a corpus sentence.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from pretrain import cli
from pretrain.data import corpus as corpus_lib
from pretrain.data import prepare as prepare_lib
from pretrain.data import sentencepiece_tokenizer
from pretrain.data import tokenizer_files
from pretrain.errors import PretrainError


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.DEFINE_string("out", "", "Write the model here instead of into the cache.")


def _sample_sentence(data_cfg) -> str:
  """The first train sentence of a readable length (from the corpus' first few MB), to show its pieces."""
  first = ""
  for s in prepare_lib.sample_sentences(data_cfg, 4 << 20):
    first = first or s
    if 8 <= len(s.split()) <= 30:
      return s
  return first


def run(config, out: str) -> None:
  data_cfg, tok_cfg = config.data, config.tokenizer
  path = (
    os.path.expanduser(out) if out else tokenizer_files.cached_tokenizer_path(tok_cfg, data_cfg)
  )
  if tok_cfg.path and not out:
    tokenizer = tokenizer_files.open_tokenizer(tok_cfg.path)
  elif not out and os.path.isfile(path):
    print(f"already trained, reusing {path}")
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(path)
  else:
    print(
      f"training a {tok_cfg.model_type} tokenizer (vocab {tok_cfg.vocab_size}) on the "
      f"{data_cfg.source} corpus ...",
      flush=True,
    )
    tokenizer = prepare_lib.train_on_sample(data_cfg, tok_cfg, path)
  print(f"path: {tokenizer.path}")
  print(f"vocab_size: {tokenizer.vocab_size}")
  print("special ids: " + ", ".join(f"{k}={v}" for k, v in tokenizer.special.ids().items()))
  units, sources = corpus_lib.plan_units(data_cfg)
  print(
    f"corpus: source={data_cfg.source}, files={len(sources)}, "
    f"bytes={sum(s['size'] for s in sources)}, units={len(units)}"
  )
  sample = _sample_sentence(data_cfg)
  pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode([sample])[0]]
  print(f"sample: {sample}")
  print(f"pieces: {' '.join(pieces)}")


def main(argv: list[str]) -> None:
  cli.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if flags.FLAGS.config is None:
    raise app.UsageError("--config is required")
  try:
    run(flags.FLAGS.config, flags.FLAGS.out)
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
