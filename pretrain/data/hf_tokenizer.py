"""Hugging Face tokenizers: a `tokenizer.json` or a WordPiece `vocab.txt`, read with `tokenizers`.

This is how a checkpoint imported with `python -m pretrain.convert from-hf`
keeps training on its own vocabulary: `tokenizer.path` names the file (or the
HF folder holding it). The special tokens come from `tokenizer_config.json`
beside the file when there is one (`cls_token`, `sep_token`, ...), else from
the usual spellings ([CLS]/<s>, [SEP]/</s>, [PAD]/<pad>, [MASK]/<mask>,
[UNK]/<unk>, <|endoftext|>). Specials are the role tokens plus every added
token marked special; they are never masked nor drawn as random replacements.

Text is encoded without the tokenizer's own [CLS]/[SEP] template
(`add_special_tokens=False`) and without truncation or padding: the example
builders place the special tokens themselves.

A `vocab.txt` becomes BERT's tokenizer (BertNormalizer, BertPreTokenizer,
WordPiece with `##` continuations); it lowercases when tokenizer_config.json
says `do_lower_case`, or, without one, when the vocabulary has no uppercase
letters (an uncased vocabulary).
"""

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers

from pretrain.data import sentencepiece_tokenizer
from pretrain.data import special_tokens
from pretrain.errors import PretrainError

FILES = ("tokenizer.json", "vocab.txt")  # What a folder is searched for, in this order.
CONFIG = "tokenizer_config.json"
# The spellings tried for each role, in order, when tokenizer_config.json does not name the token.
_ROLE_TOKENS = {
  "pad": ("[PAD]", "<pad>", "<|padding|>"),
  "unk": ("[UNK]", "<unk>", "<|endoftext|>"),
  "cls": ("[CLS]", "<s>"),
  "sep": ("[SEP]", "</s>"),
  "mask": ("[MASK]", "<mask>"),
  "eos": ("<|endoftext|>", "</s>", "[SEP]"),
}
_WORDPIECE_PREFIX = "##"
_BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': byte-level BPE's mark of a piece that begins with a space.


def find_in_folder(folder: str) -> str:
  """The tokenizer file of an HF model folder: tokenizer.json, else vocab.txt."""
  for name in FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise PretrainError(f"tokenizer.path {folder!r} is a folder without {' or '.join(FILES)}")


def _read_config(path: str) -> tuple[dict, bytes]:
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG)
  if not os.path.isfile(config_path):
    return {}, b""
  try:
    with open(config_path, "rb") as f:
      raw = f.read()
    config = json.loads(raw)
  except (OSError, ValueError) as e:
    raise PretrainError(f"cannot read {config_path}: {e}") from None
  if not isinstance(config, dict):
    raise PretrainError(f"{config_path} is not a JSON object")
  return config, raw


def _token_text(value: Any) -> str | None:
  """tokenizer_config.json writes a token as a string or as {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _uncased(pieces: Sequence[str]) -> bool:
  return not any(p.lower() != p for p in pieces if not (p.startswith("[") and p.endswith("]")))


def _wordpiece(path: str, text: str, lowercase: bool | None) -> tokenizers.Tokenizer:
  vocab, seen = {}, set()
  for line in text.splitlines():
    piece = line.rstrip("\r\n")
    if piece in seen:
      raise PretrainError(f"{path}: the piece {piece!r} appears twice (line {len(vocab) + 1})")
    seen.add(piece)
    vocab[piece] = len(vocab)
  if not vocab:
    raise PretrainError(f"{path} is an empty vocabulary")
  unk = next((t for t in _ROLE_TOKENS["unk"] if t in vocab), None)
  if unk is None:
    raise PretrainError(f"{path}: a WordPiece vocabulary needs an unknown token ([UNK] or <unk>)")
  if lowercase is None:
    lowercase = _uncased(list(vocab))
  tok = tokenizers.Tokenizer(
    models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix=_WORDPIECE_PREFIX)
  )
  tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix=_WORDPIECE_PREFIX)
  # Role tokens as special added tokens: matched whole in text, never split.
  tok.add_special_tokens([t for names in _ROLE_TOKENS.values() for t in names if t in vocab])
  return tok


def _pre_tokenizer_types(spec: Any) -> set[str]:
  if not isinstance(spec, dict):
    return set()
  types = {spec.get("type")}
  for sub in spec.get("pretokenizers") or []:
    types |= _pre_tokenizer_types(sub)
  return types


def _word_start(pieces: list[str | None], spec: dict) -> np.ndarray:
  """bool [V]: pieces that begin a word, by the model's own convention for word boundaries."""
  model = spec.get("model") or {}
  pre = _pre_tokenizer_types(spec.get("pre_tokenizer"))
  if model.get("type") == "WordPiece":
    prefix = model.get("continuing_subword_prefix") or _WORDPIECE_PREFIX
    return np.array([p is None or not p.startswith(prefix) for p in pieces], bool)
  if "ByteLevel" in pre:
    marker = _BYTE_LEVEL_SPACE
  elif "Metaspace" in pre:
    marker = (spec.get("pre_tokenizer") or {}).get(
      "replacement"
    ) or sentencepiece_tokenizer.WORD_START
  else:
    return np.ones(len(pieces), bool)  # No word marks: every piece is its own word.
  return np.array([p is None or p.startswith(marker) for p in pieces], bool)


class HfTokenizer:
  """An HF tokenizer with the interface of `sentencepiece_tokenizer.SentencePieceTokenizer`
  (encode, decode, special, word_start)."""

  def __init__(self, path: str):
    self._path = path
    try:
      with open(path, "rb") as f:
        raw = f.read()
      text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
      raise PretrainError(f"cannot read tokenizer {path!r}: {e}") from None
    config, config_raw = _read_config(path)
    self._fingerprint = hashlib.sha256(raw + b"\0" + config_raw).hexdigest()
    if path.endswith(".json"):
      try:
        tok = tokenizers.Tokenizer.from_str(text)
      except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a bare Exception.
        raise PretrainError(f"{path!r} is not a tokenizers tokenizer.json: {e}") from None
    else:
      lowercase = config.get("do_lower_case")
      tok = _wordpiece(path, text, lowercase if isinstance(lowercase, bool) else None)
    tok.no_truncation()
    tok.no_padding()
    self._tok = tok

    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    pieces: list[str | None] = [None] * size  # None: an id no piece has.
    for piece, i in vocab.items():
      pieces[i] = piece
    roles = {}
    for role, names in _ROLE_TOKENS.items():
      named = _token_text(config.get(f"{role}_token"))
      candidates = (named,) if named is not None else names
      roles[role] = next((vocab[t] for t in candidates if t in vocab), None)
      if named is not None and roles[role] is None:
        raise PretrainError(f"{CONFIG} names {role}_token={named!r}, which is not in {path}")
    if roles["eos"] is None:
      roles["eos"] = roles["sep"]
    is_special = np.array([p is None for p in pieces], bool)
    for i, added in tok.get_added_tokens_decoder().items():
      if added.special:
        is_special[i] = True
    for i in roles.values():
      if i is not None:
        is_special[i] = True
    if is_special.all():
      raise PretrainError(f"{path}: every token is special; nothing to train on")
    is_special.flags.writeable = False
    self._special = special_tokens.SpecialTokens(
      **roles, is_special=is_special, source=f"the tokenizer {path}"
    )
    word_start = _word_start(pieces, json.loads(tok.to_str())) | is_special
    word_start.flags.writeable = False
    self._word_start = word_start
    sentinels = []
    while f"<extra_id_{len(sentinels)}>" in vocab:
      sentinels.append(vocab[f"<extra_id_{len(sentinels)}>"])
    self._sentinels = tuple(sentinels)

  @property
  def path(self) -> str:
    return self._path

  @property
  def vocab_size(self) -> int:
    return len(self._word_start)

  @property
  def fingerprint(self) -> str:
    """sha256 hex of the tokenizer file and the tokenizer_config.json beside it."""
    return self._fingerprint

  @property
  def special(self) -> special_tokens.SpecialTokens:
    return self._special

  @property
  def word_start(self) -> np.ndarray:
    """bool [vocab_size]: pieces that begin a word, and the special tokens."""
    return self._word_start

  @property
  def sentinels(self) -> tuple[int, ...]:
    """Ids of <extra_id_0>, <extra_id_1>, ... (T5's sentinels) when the vocabulary has them."""
    return self._sentinels

  def encode(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i)) or ""

  def __repr__(self) -> str:
    return f"HfTokenizer(path={self._path!r}, vocab_size={self.vocab_size})"
