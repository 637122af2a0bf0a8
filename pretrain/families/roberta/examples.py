"""RoBERTa FULL-SENTENCES examples built on the fly, by global example index.

Liu et al. (2019), section 4.2: "Each input is packed with full sentences
sampled contiguously from one or more documents, such that the total length is
at most 512 tokens. Inputs may cross document boundaries. When we reach the end
of one document, we begin sampling sentences from the next document and add an
extra separator token between documents."

* Each epoch lays the documents end to end in a new order (seeded by
  (seed, epoch)) with one [SEP] between neighbours: the epoch's *stream*. The
  stream is cut greedily into blocks of whole sentences of at most
  max_seq_length - 2 tokens, separators included; a block never starts or ends
  with a separator. A sentence longer than that is a block of its own, cropped
  at a random offset on each draw.
* Global index i reads epoch i // N, slot i % N of a per-epoch permutation of
  the blocks, N being the first epoch's block count (as BertExamples: a plan
  with more blocks drops a random few, one with fewer repeats a random few).
* Masks are dynamic: drawn from counters keyed by (seed, i), so each draw of a
  block gets new ones, and the same (seed, i) gives the same example anywhere.

Example layout: `[CLS] block [SEP] [PAD]...`; no segment ids (all zero), no
next-sentence label. Separators inside a block are never masked.

A batch reads its tokens in one `Documents.take` of just the positions its blocks cover.
"""

import dataclasses

import numpy as np

from pretrain.data.epochs import Epochs
from pretrain.data.streams import doc_stream, Stream
from pretrain.data.tokenized import Documents
from pretrain.data.special_tokens import SpecialTokens
from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random
from pretrain.objectives import masking

_CROP = 0  # Counter of the crop offset of an over-long sentence (stream 0).


@dataclasses.dataclass(frozen=True)
class RobertaExampleConfig:
  max_seq_length: int = 512
  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int = 80
  whole_word_masking: bool = False

  def __post_init__(self):
    if self.max_seq_length < 3:
      raise PretrainError(f"max_seq_length={self.max_seq_length} must be >= 3")
    masking.check_config(self)

  @property
  def max_num_tokens(self) -> int:
    """Room for the block: max_seq_length minus [CLS] and the final [SEP]."""
    return self.max_seq_length - 2


def _chain(nxt: np.ndarray) -> np.ndarray:
  """0, nxt[0], nxt[nxt[0]], ... while < n = len(nxt), given nxt[i] > i; by pointer doubling.

  O(n log k) vectorized work for a chain of k links, instead of k Python steps.
  """
  n = nxt.size
  jump = np.append(nxt, n)  # f^m with n absorbing; m = len(path).
  path = np.zeros([1], np.int64)  # f^0(0), ..., f^(m-1)(0)
  while path[-1] < n:
    path = np.concatenate([path, jump[path]])
    jump = jump[jump]
  return path[path < n]


def plan_blocks(
  docs: Documents, max_tokens: int, doc_order: np.ndarray
) -> tuple[Stream, np.ndarray]:
  """(the stream of `doc_order`, blocks int64 [n, 2] as (start, end) stream positions); reads no tokens.

  Args:
    docs: the corpus.
    max_tokens: block budget, separators included.
    doc_order: the nonempty documents, in stream order.
  """
  ds, ss = docs.doc_starts, docs.sentence_starts
  stream = doc_stream(docs, doc_order)  # Every document but the first opens with a separator.
  # Every sentence's (start, end) on the stream, in stream order.
  n_sent = ds[doc_order + 1] - ds[doc_order]  # [D]
  first = np.repeat(ds[doc_order] - np.cumsum(n_sent) + n_sent, n_sent)
  sentence = first + np.arange(int(n_sent.sum()))  # [S] sentence ids in stream order
  j = np.repeat(np.arange(len(doc_order)), n_sent)
  begin = stream.doc_start[j] + stream.opens_with_sep(j) + (ss[sentence] - stream.doc_tokens[j])
  end = begin + (ss[sentence + 1] - ss[sentence])
  # A block from sentence k takes every following sentence that ends within budget, at least one.
  nxt = np.maximum(
    np.searchsorted(end, begin + max_tokens, side="right"), np.arange(1, begin.size + 1)
  )
  firsts = _chain(nxt)
  blocks = np.stack([begin[firsts], end[nxt[firsts] - 1]], axis=1)
  return stream, blocks[blocks[:, 1] > blocks[:, 0]]  # Blocks of empty sentences only are dropped.


class RobertaExamples(masking.MlmExamples):
  """Random access to an endless stream of FULL-SENTENCES MLM examples: `self[i]` for any i >= 0."""

  def __init__(
    self,
    docs: Documents,
    cfg: RobertaExampleConfig,
    vocab_size: int,
    seed: int,
    word_start: np.ndarray | None = None,
    special: SpecialTokens | None = None,
  ):
    """`special`: the tokenizer's special ids (default: the project's sentencepiece layout)."""
    super().__init__("RoBERTa", docs, cfg, vocab_size, seed, word_start, special)
    if not self._nonempty_docs.size:
      raise PretrainError("the corpus yields no RoBERTa block (no tokens)")
    first = self._plan(0)
    self._epochs = Epochs(len(first[1]), self._plan, first=first)

  @property
  def num_instances(self) -> int:
    """Blocks in the first epoch; every epoch has this many examples."""
    return self._epochs.num_per_epoch

  def _plan(self, epoch: int) -> tuple[Stream, np.ndarray, np.ndarray]:
    """(stream, blocks [n, 2], slot -> block [N]) of an epoch; epoch 0's block count is N."""
    rng = np.random.default_rng([self.seed, epoch])
    stream, blocks = plan_blocks(
      self._docs, self.cfg.max_num_tokens, rng.permutation(self._nonempty_docs)
    )
    n = self.num_instances if epoch else len(blocks)
    order = rng.permutation(len(blocks))[np.arange(n) % len(blocks)]
    return stream, blocks, order

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples of `indices` stacked: each field [B, ...]; row b equals self[indices[b]]."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    groups = self._epochs.groups(idx)
    cfg, b, length, sp = self.cfg, idx.size, self.cfg.max_seq_length, self.special
    keys = keyed_random.row_keys(self.seed, idx)
    col = np.arange(length)[None, :]
    src = np.full([b, length], -1, np.int64)  # Flat token positions; -1 at separators and padding.
    n_text = np.zeros([b], np.int64)
    for g in groups:
      stream, blocks, order = g.plan
      start, end = blocks[order[g.slots]].T
      n = np.minimum(end - start, cfg.max_num_tokens)
      over = end - start - n  # > 0 only for a lone over-long sentence.
      u = keyed_random.uniform(keyed_random.bits(keys[g.rows], np.asarray([_CROP])))[:, 0]
      start = start + (u * (over + 1)).astype(np.int64)
      in_block = (col >= 1) & (col <= n[:, None])
      src[g.rows] = np.where(
        in_block, stream.positions(np.where(in_block, start[:, None] + col - 1, 0)), -1
      )
      n_text[g.rows] = n
    text = (col >= 1) & (col <= n_text[:, None])
    ids = np.where(text, sp.sep, sp.pad).astype(np.int32)
    tok = src >= 0
    ids[tok] = self._docs.take(src[tok])  # The batch's one read.
    rows = np.arange(b)
    ids[:, 0] = sp.cls
    ids[rows, n_text + 1] = sp.sep
    input_mask = (col < (n_text + 2)[:, None]).astype(np.int32)
    input_ids, masked = self._mask(
      ids, text, idx
    )  # The separators inside the block are no targets.
    return {"input_ids": input_ids, "input_mask": input_mask, **masked}
