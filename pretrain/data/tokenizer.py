"""Tokenizers, their special tokens, training, and encoding documents.

A tokenizer is a file (`tokenizer.path`) or trained once on a bounded sample of
the configured corpus (pretrain/data/prepare.py) and cached under
$PRETRAIN_CACHE_DIR (default ~/.cache/pretrain). Tokens are kept in token
stores (pretrain/data/store.py), not here.

`tokenizer.path` may name
  a SentencePiece model (.model) with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0..4,
    as `python -m pretrain.tokenizer` trains (and the default run trains itself);
  a Hugging Face `tokenizer.json` or a WordPiece `vocab.txt` (or a folder holding
    one), read with the `tokenizers` library (pretrain/data/hf_tokenizer.py), so a
    checkpoint imported with `pretrain.convert` trains on its own vocabulary.
Every tokenizer tells the example builders its special ids (`special`) instead
of their assuming the fixed ids above.
"""
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import logging
import numbers
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from pretrain import paths
from pretrain.data import corpus as corpus_lib
from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError

_logger = logging.getLogger(__name__)

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_TYPES = ("unigram", "bpe")
WORD_START = "\u2581"  # SentencePiece's '▁' marks a piece that begins a word.

# Bump when training options or the cached array layout change: both key caches.
FORMAT_VERSION = "spm-v1"
# Fixed, not os.cpu_count(): the trained model depends on the thread count, and
# a cached tokenizer must be the same on every machine.
_TRAIN_THREADS = 4
_ENCODE_BATCH = 65_536
_SAMPLE_SEED = 20_240_601
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


@dataclasses.dataclass(frozen=True, eq=False)
class SpecialTokens:
  """The ids the example builders write, and which ids are special.

  A role the vocabulary lacks is None; a task that needs it says so (`require`).
  Special ids are never masked-LM targets nor random replacements.
  """
  pad: int | None
  unk: int | None
  cls: int | None  # Starts a BERT/RoBERTa sequence (RoBERTa's <s>).
  sep: int | None  # Ends a BERT segment (RoBERTa's </s>).
  mask: int | None
  eos: int | None  # Ends a text: GPT-2's document separator, T5's EOS.
  is_special: np.ndarray  # bool [vocab_size]
  source: str = "the tokenizer"

  ROLES = ("pad", "unk", "cls", "sep", "mask", "eos")

  def require(self, task: str, *roles: str) -> None:
    missing = [r for r in roles if getattr(self, r) is None]
    if missing:
      have = ", ".join(f"{r}={getattr(self, r)}" for r in self.ROLES if getattr(self, r) is not None)
      raise PretrainError(f"the {task} task needs the {', '.join(missing)} token{'s' * (len(missing) > 1)}, "
                          f"which {self.source} does not have (it has {have or 'no special tokens'})")

  @functools.cached_property
  def random_ids(self) -> np.ndarray:
    """int32: the ids a masked position may be replaced with (every non-special id)."""
    return np.flatnonzero(~self.is_special).astype(np.int32)

  def ids(self) -> dict[str, int]:
    return {r: getattr(self, r) for r in self.ROLES if getattr(self, r) is not None}


def project_special_tokens(vocab_size: int, source: str = "the tokenizer") -> SpecialTokens:
  """The project's SentencePiece layout: [PAD] [UNK] [CLS] [SEP] [MASK] at 0..4; [SEP] also ends a text."""
  is_special = np.arange(vocab_size) < NUM_SPECIAL
  is_special.flags.writeable = False
  return SpecialTokens(pad=PAD_ID, unk=UNK_ID, cls=CLS_ID, sep=SEP_ID, mask=MASK_ID, eos=SEP_ID,
                       is_special=is_special, source=source)


@dataclasses.dataclass(frozen=True)
class StandInTokenizer:
  """What a task reads from a tokenizer, for timing and tests that need no trained vocabulary:
  the project's special ids, every piece a word start, no text."""
  vocab_size: int
  path: str = "<stand-in>"
  sentinels: tuple[int, ...] = ()

  @property
  def word_start(self) -> np.ndarray:
    return np.ones([self.vocab_size], bool)

  @functools.cached_property
  def special(self) -> SpecialTokens:
    return project_special_tokens(self.vocab_size, f"the tokenizer {self.path}")


def cache_dir() -> str:
  """The cache root: $PRETRAIN_CACHE_DIR or ~/.cache/pretrain."""
  return os.path.expanduser(os.environ.get("PRETRAIN_CACHE_DIR") or "~/.cache/pretrain")


class Tokenizer:
  """A SentencePiece model whose ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]."""

  def __init__(self, path: str):
    self._path = path
    try:
      with open(path, "rb") as f:
        proto = f.read()
    except OSError as e:
      raise PretrainError(f"cannot read tokenizer model {path!r}: {e.strerror or e}") from None
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError, TypeError) as e:
      raise PretrainError(f"{path!r} is not a SentencePiece model: {e}") from None
    self._fingerprint = hashlib.sha256(proto).hexdigest()
    size = self._sp.GetPieceSize()
    for i, expected in enumerate(SPECIAL_TOKENS):
      piece = self._sp.IdToPiece(i) if i < size else None
      if piece != expected:
        raise PretrainError(
            f"tokenizer model {path!r}: id {i} is {piece!r}, expected {expected!r} "
            f"(special tokens must be {', '.join(SPECIAL_TOKENS)} at ids 0..{NUM_SPECIAL - 1}; "
            "train one with `python -m pretrain.tokenizer`)")
    pieces = [self._sp.IdToPiece(i) for i in range(size)]
    word_start = np.array([p.startswith(WORD_START) for p in pieces], bool)
    word_start[:NUM_SPECIAL] = True
    word_start.flags.writeable = False
    self._word_start = word_start
    self._special = project_special_tokens(size, f"the tokenizer {path}")

  @property
  def path(self) -> str:
    return self._path

  @property
  def special(self) -> SpecialTokens:
    return self._special

  @property
  def sentinels(self) -> tuple[int, ...]:
    """T5's sentinel ids in the vocabulary (<extra_id_0>, ...): none here; the T5 task adds its own."""
    return ()

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def fingerprint(self) -> str:
    """sha256 hex of the serialized model."""
    return self._fingerprint

  @property
  def word_start(self) -> np.ndarray:
    """bool [vocab_size]: pieces that begin a word, and the special tokens.

    A word (for whole-word masking) is a word-start piece plus the
    non-word-start pieces after it.
    """
    return self._word_start

  def encode(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.IdToPiece(int(i))

  def __repr__(self) -> str:
    return f"Tokenizer(path={self._path!r}, vocab_size={self.vocab_size})"


def _check_options(vocab_size: Any, model_type: Any) -> None:
  if model_type not in MODEL_TYPES:
    raise PretrainError(f"tokenizer.model_type={model_type!r} is unknown; allowed: {', '.join(MODEL_TYPES)}")
  if not isinstance(vocab_size, numbers.Integral) or isinstance(vocab_size, bool) or vocab_size <= NUM_SPECIAL:
    raise PretrainError(f"tokenizer.vocab_size={vocab_size!r} must be an integer > {NUM_SPECIAL}")


def train_tokenizer(sentences: Iterable[str], vocab_size: int, model_type: str, out_path: str, *,
                    input_sentence_size: int = 0) -> Tokenizer:
  """Trains a SentencePiece model on `sentences` and writes it atomically to `out_path`.

  input_sentence_size > 0 keeps at most that many sentences, sampled with a fixed seed, so
  sentencepiece's memory is bounded; 0 trains on all of them with the options of old, so a
  model trained before is trained again byte for byte.
  Deterministic: the same sentences in the same order give identical model bytes.
  """
  _check_options(vocab_size, model_type)
  bounded = {}
  if input_sentence_size:
    bounded = {"input_sentence_size": int(input_sentence_size), "shuffle_input_sentence": True}
    spm.set_random_generator_seed(_SAMPLE_SEED)  # Its reservoir sampling, else seeded by the clock.
  count = 0

  def nonempty() -> Iterable[str]:
    nonlocal count
    for s in sentences:
      if s and not s.isspace():
        count += 1
        yield s

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=nonempty(),
        model_writer=model,
        vocab_size=int(vocab_size),
        model_type=model_type,
        pad_id=PAD_ID, pad_piece="[PAD]",
        unk_id=UNK_ID, unk_piece="[UNK]",
        bos_id=-1, eos_id=-1,
        control_symbols=list(SPECIAL_TOKENS[2:]),
        character_coverage=0.9995,
        num_threads=_TRAIN_THREADS,
        **({"shuffle_input_sentence": False} | bounded),
        minloglevel=2,
    )
  except RuntimeError as e:
    if not count:
      raise PretrainError(f"no text to train the tokenizer {out_path!r} on") from None
    m = _TOO_HIGH.search(str(e))
    if m:
      raise PretrainError(
          f"tokenizer.vocab_size={vocab_size} is too large for the training text "
          f"({count} sentences); sentencepiece suggests at most {m.group(2)}") from None
    raise PretrainError(f"training the tokenizer {out_path!r} failed: {e}") from None
  paths.write_atomic(out_path, lambda f: f.write(model.getvalue()))
  return Tokenizer(out_path)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def cached_tokenizer_path(tok_cfg: Any, corpus_cfg: Any) -> str:
  """Where a tokenizer trained from `corpus_cfg` with `tok_cfg`'s options is cached."""
  vocab_size, model_type = _get(tok_cfg, "vocab_size"), _get(tok_cfg, "model_type", "unigram")
  _check_options(vocab_size, model_type)
  key = [
      FORMAT_VERSION, corpus_lib.corpus_fingerprint(corpus_cfg), vocab_size, model_type,
      # The tokenizer sees only the train split, which depends on it.
      float(_get(corpus_cfg, "heldout_fraction", 0.02)),
  ]
  # The sample's bounds, only when set: with the defaults a model cached before is the one trained now.
  for name in ("sample_bytes", "input_sentence_size"):
    if _get(tok_cfg, name, None):
      key.append([name, int(_get(tok_cfg, name))])
  key = json.dumps(key)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_dir(), "tokenizers", f"{digest}.model")


def open_tokenizer(path: str):
  """The tokenizer in `path`: a SentencePiece model, an HF tokenizer.json or vocab.txt, or a folder of one."""
  path = os.path.expanduser(path)
  if paths.is_remote(path):  # E.g. the tokenizer of a converted folder in a bucket.
    raise PretrainError(f"tokenizer.path {path!r} is a URL: tokenizer files must be local; copy it (e.g. gsutil "
                        "cp) and set tokenizer.path to the copy")
  if os.path.isdir(path):
    from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
    return hf_tokenizer.HfTokenizer(hf_tokenizer.find_in_folder(path))
  if not os.path.isfile(path):
    raise PretrainError(f"tokenizer.path {path!r} does not exist")
  if path.endswith((".json", ".txt")):
    from pretrain.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
    return hf_tokenizer.HfTokenizer(path)
  return Tokenizer(path)


def load_tokenizer(tok_cfg: Any, corpus_cfg: Any = None):
  """Opens `tok_cfg.path`, or (path empty) the tokenizer trained once on a sample of the corpus and cached."""
  from pretrain.data import prepare  # pylint: disable=g-import-not-at-top  (prepare imports this module)
  return prepare.resolve_tokenizer(corpus_cfg, tok_cfg)


def tokenize_documents(docs: list[list[str]], tokenizer: Tokenizer) -> TokenizedDocs:
  """Encodes every sentence (batched, multi-threaded); empty sentences and documents are dropped."""
  sentences = list(itertools.chain.from_iterable(docs))
  tokens, lengths = [], []
  for i in range(0, len(sentences), _ENCODE_BATCH):
    ids = tokenizer.encode(sentences[i:i + _ENCODE_BATCH])
    n = np.fromiter(map(len, ids), np.int64, count=len(ids))
    lengths.append(n)
    tokens.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(n.sum())))
  lengths = np.concatenate(lengths) if lengths else np.zeros([0], np.int64)
  flat = np.concatenate(tokens) if tokens else np.zeros([0], np.int32)
  keep = lengths > 0
  doc_of_sentence = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
  per_doc = np.bincount(doc_of_sentence[keep], minlength=len(docs))
  per_doc = per_doc[per_doc > 0]
  return TokenizedDocs(
      tokens=flat,
      sentence_starts=np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
      doc_starts=np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64),
  )
