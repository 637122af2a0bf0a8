"""Tests for pretrain.data.tokenized: encoding documents into the in-memory TokenizedDocs."""

import unicodedata

import numpy as np
import pytest

from pretrain.data import corpus
from pretrain.data.sentencepiece_tokenizer import SentencePieceTokenizer
from pretrain.data.sentencepiece_tokenizer import train_tokenizer
from pretrain.data.tokenized import tokenize_documents
from pretrain.data.tokenized import TokenizedDocs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> SentencePieceTokenizer:
  sentences = [s for d in corpus.embedded_documents()[:120] for s in d][:3000]
  return train_tokenizer(sentences, 400, "unigram", str(tmp_path_factory.mktemp("tok") / "t.model"))


def _normalized(text: str) -> str:
  return " ".join(unicodedata.normalize("NFKC", text).split())


def test_tokenize_documents(tokenizer):
  docs = [["The first sentence.", "", "The second one."], ["", "  "], [], ["A lone sentence here."]]
  tokenized = tokenize_documents(docs, tokenizer)
  expected = TokenizedDocs.from_lists([tokenizer.encode(d) if d else [] for d in docs])
  for field in ("tokens", "sentence_starts", "doc_starts"):
    got, want = getattr(tokenized, field), getattr(expected, field)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
  assert tokenized.num_docs == 2 and tokenized.num_sentences == 3
  assert _normalized(tokenizer.decode(tokenized.sentence(1))) == "The second one."
  empty = tokenize_documents([], tokenizer)
  assert (empty.num_docs, empty.num_sentences, empty.num_tokens) == (0, 0, 0)


def test_tokenize_documents_matches_per_sentence_encoding(tokenizer):
  docs = corpus.embedded_documents()[100:140]
  tokenized = tokenize_documents(docs, tokenizer)
  expected = TokenizedDocs.from_lists([tokenizer.encode(d) for d in docs])
  np.testing.assert_array_equal(tokenized.tokens, expected.tokens)
  np.testing.assert_array_equal(tokenized.sentence_starts, expected.sentence_starts)
  np.testing.assert_array_equal(tokenized.doc_starts, expected.doc_starts)
