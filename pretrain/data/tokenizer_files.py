"""Which tokenizer a run uses: the file `tokenizer.path` names, or one trained and cached.

A tokenizer is a file (`tokenizer.path`) or trained once on a bounded sample of
the configured corpus (pretrain/data/prepare.py) and cached under
$PRETRAIN_CACHE_DIR (default ~/.cache/pretrain). Tokens are kept in token
stores (pretrain/data/store.py), not here.

`tokenizer.path` may name
  a SentencePiece model (.model, pretrain/data/sentencepiece_tokenizer.py) with
    [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0..4, as `python -m pretrain.tokenizer`
    trains (and the default run trains itself);
  a Hugging Face `tokenizer.json` or a WordPiece `vocab.txt` (or a folder holding
    one), read with the `tokenizers` library (pretrain/data/hf_tokenizer.py), so a
    checkpoint imported with `pretrain.convert` trains on its own vocabulary.
Every tokenizer tells the example builders its special ids (`special`,
pretrain/data/special_tokens.py) instead of their assuming the fixed ids above.
"""

import hashlib
import json
import os
from typing import Any

from pretrain import config as config_lib
from pretrain import paths
from pretrain.data import corpus as corpus_lib
from pretrain.data.sentencepiece_tokenizer import (
  check_options,
  FORMAT_VERSION,
  SentencePieceTokenizer,
)
from pretrain.errors import PretrainError


def cached_tokenizer_path(tok_cfg: Any, corpus_cfg: Any) -> str:
  """Where a tokenizer trained from `corpus_cfg` with `tok_cfg`'s options is cached."""
  vocab_size = config_lib.field(tok_cfg, "vocab_size")
  model_type = config_lib.field(tok_cfg, "model_type", "unigram")
  check_options(vocab_size, model_type)
  key = [
    FORMAT_VERSION,
    corpus_lib.corpus_fingerprint(corpus_cfg),
    vocab_size,
    model_type,
    # The tokenizer sees only the train split, which depends on it.
    float(config_lib.field(corpus_cfg, "heldout_fraction", 0.02)),
  ]
  # The sample's bounds, only when set: with the defaults a model cached before is the one trained now.
  for name in ("sample_bytes", "input_sentence_size"):
    if config_lib.field(tok_cfg, name, None):
      key.append([name, int(config_lib.field(tok_cfg, name))])
  key = json.dumps(key)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(paths.cache_dir(), "tokenizers", f"{digest}.model")


def open_tokenizer(path: str):
  """The tokenizer in `path`: a SentencePiece model, an HF tokenizer.json or vocab.txt, or a folder of one."""
  path = os.path.expanduser(path)
  if paths.is_remote(path):  # E.g. the tokenizer of a converted folder in a bucket.
    raise PretrainError(
      f"tokenizer.path {path!r} is a URL: tokenizer files must be local; copy it (e.g. gsutil "
      "cp) and set tokenizer.path to the copy"
    )
  if os.path.isdir(path):
    from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

    return hf_tokenizer.HfTokenizer(hf_tokenizer.find_in_folder(path))
  if not os.path.isfile(path):
    raise PretrainError(f"tokenizer.path {path!r} does not exist")
  if path.endswith((".json", ".txt")):
    from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top

    return hf_tokenizer.HfTokenizer(path)
  return SentencePieceTokenizer(path)


def load_tokenizer(tok_cfg: Any, corpus_cfg: Any = None):
  """Opens `tok_cfg.path`, or (path empty) the tokenizer trained once on a sample of the corpus and cached."""
  from pretrain.data import prepare  # pylint: disable=g-import-not-at-top  (prepare imports this module)

  return prepare.resolve_tokenizer(corpus_cfg, tok_cfg)
