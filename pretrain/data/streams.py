"""Documents laid end to end with separators, as a virtual token stream.

RoBERTa's FULL-SENTENCES blocks read `d0 SEP d1 SEP d2 ...` (documents in an
epoch's order) and the causal LM reads `EOT d0 EOT d1 ... EOT` (corpus order).
Neither stream is ever materialised: stream position v maps to a separator or
to a flat token position, so a batch fetches just the tokens it reads, in one
`Documents.take`.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stream:
  """Documents end to end, each opened by a separator (the first one too if `first_sep`), and one
  more separator closing the stream if `last_sep`."""

  doc_start: (
    np.ndarray
  )  # int64 [D + 1]: where the j-th document (its separator first) starts on the stream.
  doc_tokens: np.ndarray  # int64 [D]: flat token position of the j-th document's first token.
  first_sep: bool = False
  last_sep: bool = False

  @property
  def length(self) -> int:
    """Stream positions, separators included."""
    return int(self.doc_start[-1]) + int(self.last_sep)

  def opens_with_sep(self, j: np.ndarray) -> np.ndarray:
    """int64, j's shape: 1 where the j-th document opens with a separator, else 0."""
    return ((np.asarray(j) > 0) | self.first_sep).astype(np.int64)

  def positions(self, v: np.ndarray) -> np.ndarray:
    """int64, v's shape: the flat token position at stream positions v (in [0, length)), -1 at separators."""
    v = np.asarray(v, np.int64)
    if not self.doc_tokens.size:
      return np.full(v.shape, -1, np.int64)
    j = np.clip(np.searchsorted(self.doc_start, v, side="right") - 1, 0, self.doc_tokens.size - 1)
    offset = v - self.doc_start[j] - self.opens_with_sep(j)
    return np.where((offset < 0) | (v >= self.doc_start[-1]), -1, self.doc_tokens[j] + offset)

  def token_ids(self, v: np.ndarray, source, sep_id: int) -> np.ndarray:
    """int32 ids at stream positions v (any shape), sep_id at the separators.

    `source`: Documents, or a flat token array (anything with `take`); one `take` call.
    """
    pos = self.positions(v)
    ids = np.full(pos.shape, sep_id, np.int32)
    tok = pos >= 0
    ids[tok] = source.take(pos[tok])
    return ids


def doc_stream(
  docs, doc_order: np.ndarray, *, first_sep: bool = False, last_sep: bool = False
) -> Stream:
  """The stream of documents `doc_order` (nonempty ones, in stream order) of `docs` (Documents)."""
  ds, ss = docs.doc_starts, docs.sentence_starts
  order = np.asarray(doc_order, np.int64)
  first_token = ss[ds[order]].astype(np.int64)
  seps = (np.arange(order.size) > 0) | first_sep
  doc_start = np.concatenate([[0], np.cumsum(ss[ds[order + 1]] - first_token + seps)]).astype(
    np.int64
  )
  return Stream(doc_start, first_token, bool(first_sep), bool(last_sep))
