"""A tokenized corpus held as three flat arrays (no Python objects per token).

Every process of a multi-host run holds the same arrays and reads only the
examples of its own shard, as grain's random-access sources do.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizedDocs:
  tokens: np.ndarray  # int32 [n_tokens]: every sentence's ids, concatenated.
  sentence_starts: np.ndarray  # int64 [n_sentences + 1]: sentence s = tokens[starts[s]:starts[s + 1]].
  doc_starts: np.ndarray  # int64 [n_docs + 1]: document d = sentences doc_starts[d]:doc_starts[d + 1].

  @property
  def num_docs(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_sentences(self) -> int:
    return len(self.sentence_starts) - 1

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)

  def sentence(self, s: int) -> np.ndarray:
    return self.tokens[self.sentence_starts[s]:self.sentence_starts[s + 1]]

  def doc_sentence_range(self, d: int) -> range:
    return range(int(self.doc_starts[d]), int(self.doc_starts[d + 1]))

  def sentence_lengths(self) -> np.ndarray:
    return np.diff(self.sentence_starts)

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
    return cls(flat.astype(np.int32), np.asarray(sentence_starts, np.int64), np.asarray(doc_starts, np.int64))
