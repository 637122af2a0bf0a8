"""The project's SentencePiece tokenizer: the model wrapper and its training.

A SentencePiece model (.model) with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0..4
(pretrain/data/special_tokens.py), as `python -m pretrain.tokenizer` trains (and the
default run trains itself, pretrain/data/tokenizer_files.py).
"""

import hashlib
import io
import numbers
import re
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from pretrain import paths
from pretrain.data.special_tokens import NUM_SPECIAL, PAD_ID, project_special_tokens, SPECIAL_TOKENS
from pretrain.data.special_tokens import SpecialTokens, UNK_ID
from pretrain.errors import PretrainError

MODEL_TYPES = ("unigram", "bpe")
WORD_START = "\u2581"  # SentencePiece's '▁' marks a piece that begins a word.

# Bump when training options or the cached array layout change: both key caches.
FORMAT_VERSION = "spm-v1"
# Fixed, not os.cpu_count(): the trained model depends on the thread count, and
# a cached tokenizer must be the same on every machine.
_TRAIN_THREADS = 4
_SAMPLE_SEED = 20_240_601
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class SentencePieceTokenizer:
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
          "train one with `python -m pretrain.tokenizer`)"
        )
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
    return f"SentencePieceTokenizer(path={self._path!r}, vocab_size={self.vocab_size})"


def check_options(vocab_size: Any, model_type: Any) -> None:
  """Refuses a model type or vocabulary size that cannot be trained (also checked for a cache key)."""
  if model_type not in MODEL_TYPES:
    raise PretrainError(
      f"tokenizer.model_type={model_type!r} is unknown; allowed: {', '.join(MODEL_TYPES)}"
    )
  if (
    not isinstance(vocab_size, numbers.Integral)
    or isinstance(vocab_size, bool)
    or vocab_size <= NUM_SPECIAL
  ):
    raise PretrainError(f"tokenizer.vocab_size={vocab_size!r} must be an integer > {NUM_SPECIAL}")


def train_tokenizer(
  sentences: Iterable[str],
  vocab_size: int,
  model_type: str,
  out_path: str,
  *,
  input_sentence_size: int = 0,
  source: str = "",
) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `sentences` and writes it atomically to `out_path`.

  input_sentence_size > 0 keeps at most that many sentences, sampled with a fixed seed, so
  sentencepiece's memory is bounded; 0 trains on all of them with the options of old, so a
  model trained before is trained again byte for byte.
  Deterministic: the same sentences in the same order give identical model bytes. `source` (the
  corpus) is named when it holds no text; an error raised while reading it is raised as it was.
  """
  check_options(vocab_size, model_type)
  bounded = {}
  if input_sentence_size:
    bounded = {"input_sentence_size": int(input_sentence_size), "shuffle_input_sentence": True}
    spm.set_random_generator_seed(_SAMPLE_SEED)  # Its reservoir sampling, else seeded by the clock.
  count = 0

  failure: list[Exception] = []

  def nonempty() -> Iterable[str]:
    nonlocal count
    try:
      for s in sentences:
        if s and not s.isspace():
          count += 1
          yield s
    except Exception as e:  # sentencepiece would report it as a RuntimeError of its own.
      failure.append(e)
      raise

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=nonempty(),
      model_writer=model,
      vocab_size=int(vocab_size),
      model_type=model_type,
      pad_id=PAD_ID,
      pad_piece="[PAD]",
      unk_id=UNK_ID,
      unk_piece="[UNK]",
      bos_id=-1,
      eos_id=-1,
      control_symbols=list(SPECIAL_TOKENS[2:]),
      character_coverage=0.9995,
      num_threads=_TRAIN_THREADS,
      **({"shuffle_input_sentence": False} | bounded),
      minloglevel=2,
    )
  except RuntimeError as e:
    if failure:
      raise failure[0] from None
    if not count:
      raise PretrainError(
        f"no text to train the tokenizer {out_path!r} on" + (f" in {source}" if source else "")
      ) from None
    m = _TOO_HIGH.search(str(e))
    if m:
      raise PretrainError(
        f"tokenizer.vocab_size={vocab_size} is too large for the training text "
        f"({count} sentences); sentencepiece suggests at most {m.group(2)}"
      ) from None
    raise PretrainError(f"training the tokenizer {out_path!r} failed: {e}") from None
  paths.write_atomic(out_path, lambda f: f.write(model.getvalue()))
  return SentencePieceTokenizer(out_path)
