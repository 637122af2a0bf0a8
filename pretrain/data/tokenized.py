"""Tokenized documents, as the example builders read them.

`Documents` is what every builder (BERT, RoBERTa, causal LM, T5) is given: the
layout of sentences and documents as two small index arrays, and the tokens
only through `take`, so that a store on disk (pretrain/data/store.py) can read
just the documents a batch needs. `TokenizedDocs` holds everything in memory
(tests, small corpora); `tokenize_documents` encodes text into one.
"""

import dataclasses
import itertools
from typing import Protocol

import numpy as np

from pretrain.data.sentencepiece_tokenizer import SentencePieceTokenizer

_ENCODE_BATCH = 65_536


class Documents(Protocol):
  """Sentences of documents, tokens read on demand.

  Flat token positions: sentence s is positions sentence_starts[s] ..
  sentence_starts[s + 1] - 1; document d is sentences doc_starts[d] ..
  doc_starts[d + 1] - 1.
  """

  sentence_starts: np.ndarray  # int64 [num_sentences + 1]
  doc_starts: np.ndarray  # int64 [num_docs + 1]

  @property
  def num_docs(self) -> int: ...

  @property
  def num_sentences(self) -> int: ...

  @property
  def num_tokens(self) -> int: ...

  @property
  def max_token_id(self) -> int:
    """The largest token id (-1 without tokens), known without reading the tokens."""
    ...

  def take(self, positions: np.ndarray) -> np.ndarray:
    """int32 tokens at flat positions (any shape, each in [0, num_tokens))."""
    ...


@dataclasses.dataclass(frozen=True)
class TokenizedDocs:
  """Documents held as three flat arrays in memory."""

  tokens: np.ndarray  # int32 [n_tokens]: every sentence's ids, concatenated.
  sentence_starts: (
    np.ndarray
  )  # int64 [n_sentences + 1]: sentence s = tokens[starts[s]:starts[s + 1]].
  doc_starts: (
    np.ndarray
  )  # int64 [n_docs + 1]: document d = sentences doc_starts[d]:doc_starts[d + 1].

  @property
  def num_docs(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_sentences(self) -> int:
    return len(self.sentence_starts) - 1

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)

  @property
  def max_token_id(self) -> int:
    return int(self.tokens.max()) if len(self.tokens) else -1

  def take(self, positions: np.ndarray) -> np.ndarray:
    return self.tokens[positions]

  def sentence(self, s: int) -> np.ndarray:
    return self.tokens[self.sentence_starts[s] : self.sentence_starts[s + 1]]

  @classmethod
  def from_lists(cls, docs: list[list[list[int]]]) -> "TokenizedDocs":
    """Builds from documents of sentences of ids, dropping empty sentences and documents."""
    tokens, sentence_starts, doc_starts = [], [0], [0]
    for doc in docs:
      n = 0
      for sent in doc:
        if len(sent):
          tokens.append(np.asarray(sent, np.int32))
          sentence_starts.append(sentence_starts[-1] + len(sent))
          n += 1
      if n:
        doc_starts.append(doc_starts[-1] + n)
    flat = np.concatenate(tokens) if tokens else np.zeros([0], np.int32)
    return cls(
      flat.astype(np.int32), np.asarray(sentence_starts, np.int64), np.asarray(doc_starts, np.int64)
    )


def tokenize_documents(docs: list[list[str]], tokenizer: SentencePieceTokenizer) -> TokenizedDocs:
  """Encodes every sentence (batched, multi-threaded); empty sentences and documents are dropped."""
  sentences = list(itertools.chain.from_iterable(docs))
  tokens, lengths = [], []
  for i in range(0, len(sentences), _ENCODE_BATCH):
    ids = tokenizer.encode(sentences[i : i + _ENCODE_BATCH])
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
