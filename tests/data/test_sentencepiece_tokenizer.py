"""Tests for pretrain.data.sentencepiece_tokenizer: the project's model, its special ids and its training."""

import hashlib
import io
import os
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm

from pretrain.data import corpus
from pretrain.data import sentencepiece_tokenizer as spm_lib
from pretrain.data import special_tokens
from pretrain.errors import PretrainError


@pytest.fixture(scope="module")
def sentences() -> list[str]:
  return [s for d in corpus.embedded_documents()[:120] for s in d][:3000]


@pytest.fixture(scope="module")
def tokenizer(sentences, tmp_path_factory) -> spm_lib.SentencePieceTokenizer:
  return spm_lib.train_tokenizer(
    sentences, 400, "unigram", str(tmp_path_factory.mktemp("tok") / "t.model")
  )


def _normalized(text: str) -> str:
  return " ".join(unicodedata.normalize("NFKC", text).split())


def test_special_ids_are_fixed(tokenizer):
  assert (
    special_tokens.PAD_ID,
    special_tokens.UNK_ID,
    special_tokens.CLS_ID,
    special_tokens.SEP_ID,
    special_tokens.MASK_ID,
  ) == (0, 1, 2, 3, 4)
  assert special_tokens.NUM_SPECIAL == len(special_tokens.SPECIAL_TOKENS) == 5
  assert [tokenizer.id_to_piece(i) for i in range(5)] == [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
  ]
  assert tokenizer.vocab_size == 400
  # Special tokens are not matched inside text, and no id below 5 but [UNK] comes from encoding.
  ids = tokenizer.encode(["[CLS] a [MASK] b [SEP] \u2603"])[0]
  assert not set(ids) & {0, 2, 3, 4}
  assert special_tokens.UNK_ID in ids  # The snowman is not in the training text.


def test_model_with_wrong_specials_is_rejected(sentences, tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences[:500]), model_writer=model, vocab_size=100, minloglevel=2
  )  # Defaults: <unk>=0, <s>=1, </s>=2.
  path = tmp_path / "wrong.model"
  path.write_bytes(model.getvalue())
  with pytest.raises(PretrainError, match=r"wrong\.model.*id 0 is '<unk>', expected '\[PAD\]'"):
    spm_lib.SentencePieceTokenizer(str(path))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(PretrainError, match=r"junk\.model.*not a SentencePiece model"):
    spm_lib.SentencePieceTokenizer(str(tmp_path / "junk.model"))


def test_training_is_deterministic(sentences, tokenizer, tmp_path):
  again = spm_lib.train_tokenizer(sentences, 400, "unigram", str(tmp_path / "again.model"))
  first_bytes = open(tokenizer.path, "rb").read()
  assert open(again.path, "rb").read() == first_bytes
  assert again.fingerprint == tokenizer.fingerprint == hashlib.sha256(first_bytes).hexdigest()
  assert os.listdir(tmp_path) == ["again.model"]  # No temp files left behind.
  bpe = spm_lib.train_tokenizer(sentences, 400, "bpe", str(tmp_path / "bpe.model"))
  assert bpe.fingerprint != tokenizer.fingerprint
  assert [bpe.id_to_piece(i) for i in range(5)] == list(special_tokens.SPECIAL_TOKENS)


def test_training_rejects_bad_options(sentences, tmp_path):
  out = str(tmp_path / "t.model")
  with pytest.raises(
    PretrainError, match="model_type='wordpiece' is unknown; allowed: unigram, bpe"
  ):
    spm_lib.train_tokenizer(sentences, 400, "wordpiece", out)
  with pytest.raises(PretrainError, match="vocab_size=3 must be an integer"):
    spm_lib.train_tokenizer(sentences, 3, "unigram", out)
  with pytest.raises(PretrainError, match=r"vocab_size=5000 is too large .* suggests at most \d+"):
    spm_lib.train_tokenizer(["a small text", "with few pieces"] * 20, 5000, "unigram", out)
  with pytest.raises(PretrainError, match="no text"):
    spm_lib.train_tokenizer(["", "  "], 400, "unigram", out)
  assert not os.listdir(tmp_path)


def test_word_start(tokenizer):
  ws = tokenizer.word_start
  assert ws.dtype == bool and ws.shape == (tokenizer.vocab_size,)
  expected = [
    i < 5 or tokenizer.id_to_piece(i).startswith("\u2581") for i in range(tokenizer.vocab_size)
  ]
  np.testing.assert_array_equal(ws, expected)
  assert 0.2 < ws.mean() < 0.9
  # Grouping pieces at word starts gives back the words.
  text = "the interpreter evaluates expressions"
  ids = tokenizer.encode([text])[0]
  words, current = [], []
  for i in ids:
    if ws[i] and current:
      words.append(current)
      current = []
    current.append(i)
  words.append(current)
  assert [tokenizer.decode(w) for w in words] == text.split()


def test_encode_decode_round_trip(tokenizer, sentences):
  texts = [s for s in sentences[::10] if s.isascii()]
  ids = tokenizer.encode(texts)
  assert len(ids) == len(texts) and all(isinstance(i, int) for i in ids[0])
  same = sum(_normalized(tokenizer.decode(i)) == _normalized(t) for i, t in zip(ids, texts))
  assert same >= 0.95 * len(texts)
  assert tokenizer.decode(np.asarray(ids[0], np.int32)) == tokenizer.decode(ids[0])
