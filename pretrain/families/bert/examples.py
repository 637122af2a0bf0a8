"""BERT pretraining examples built on the fly, by global example index.

The semantics are google-research/bert's create_pretraining_data.py, without
its static dupe_factor copies: every draw gets fresh masks.

* Each epoch chunks the corpus anew (`plan_instances`, seeded by (seed, epoch)):
  sentences of a document accumulate until they reach a target length
  (max_num_tokens, or with probability short_seq_prob a uniform one in
  [2, max_num_tokens]) or the document ends.
* Global index i reads epoch i // N, slot i % N of a per-epoch permutation, where
  N = num_instances is the first epoch's chunk count. Every epoch has N slots:
  a plan with more chunks drops a random few, one with fewer repeats a random
  few (plans differ by a fraction of a percent). So no epoch's plan depends on
  another's, and any index is O(1) away.
* Everything else is drawn from counters keyed by (seed, i): the A/B split, the
  NSP choice (B is the rest of the chunk, or with probability 1/2 text from a
  random other document), truncation and the masks. The same (seed, i) gives
  the same example in any batch, on any process.

Example layout: `[CLS] A [SEP] B [SEP] [PAD]...`, segment ids 0 over
`[CLS] A [SEP]` and 1 over `B [SEP]`; without NSP, `[CLS] A [SEP]` with the
whole chunk as A. A batch reads its tokens in one `Documents.take` of just the
positions its rows show.
"""

import dataclasses

import numpy as np

from pretrain.data.epochs import Epochs
from pretrain.data.tokenized import Documents
from pretrain.data.special_tokens import SpecialTokens
from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random
from pretrain.objectives import masking

# Counters of the per-example draws (keyed by (seed, index), stream 0).
_SPLIT, _RANDOM_NEXT, _RANDOM_DOC, _RANDOM_START = 0, 1, 2, 3
_TRUNC_A, _TRUNC_B = 1 << 20, 1 << 21  # Up to 2**20 64-trial words each.
_PLAN_BLOCK = 1 << 20  # Sentences per block of plan_instances.


@dataclasses.dataclass(frozen=True)
class BertExampleConfig:
  max_seq_length: int = 128
  short_seq_prob: float = 0.1
  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int = 20
  whole_word_masking: bool = False
  next_sentence_prediction: bool = True

  def __post_init__(self):
    specials = 3 if self.next_sentence_prediction else 2
    if self.max_seq_length < specials + 2:
      raise PretrainError(f"max_seq_length={self.max_seq_length} must be >= {specials + 2}")
    if not 0.0 <= self.short_seq_prob <= 1.0:
      raise PretrainError(f"short_seq_prob={self.short_seq_prob} must be in [0, 1]")
    masking.check_config(self)

  @property
  def max_num_tokens(self) -> int:
    """Room for text: max_seq_length minus [CLS] and the [SEP]s."""
    return self.max_seq_length - (3 if self.next_sentence_prediction else 2)


def plan_instances(docs: Documents, cfg: BertExampleConfig, rng: np.random.Generator) -> np.ndarray:
  """One epoch's chunks as int64 [n, 4]: (doc, first_sentence, end_sentence, target_length).

  As create_instances_from_document, but each chunk (not each document) draws its
  target. Vectorized, over blocks of documents to bound memory.
  """
  ds = docs.doc_starts
  blocks, d = [], 0
  while d < docs.num_docs:
    e = max(d + 1, int(np.searchsorted(ds, ds[d] + _PLAN_BLOCK, side="right")) - 1)
    blocks.append(_plan_docs(docs, cfg, rng, d, e))
    d = e
  return np.concatenate(blocks) if blocks else np.zeros([0, 4], np.int64)


def _plan_docs(docs: Documents, cfg: BertExampleConfig, rng: np.random.Generator, d0: int, d1: int):
  """plan_instances of documents [d0, d1): every sentence draws the target a chunk
  starting there would use, then chunks are followed from each document's start."""
  ds = docs.doc_starts[d0 : d1 + 1]
  s0, s1 = int(ds[0]), int(ds[-1])
  ss = docs.sentence_starts[s0 : s1 + 1]
  n, max_tokens = s1 - s0, cfg.max_num_tokens
  target = np.full([n], max_tokens, np.int64)
  short = np.flatnonzero(rng.random(n, np.float32) < cfg.short_seq_prob)
  target[short] = rng.integers(2, max_tokens + 1, short.size)
  doc_of = np.repeat(np.arange(d0, d1), np.diff(ds))  # [n]
  doc_end = ds[1:][doc_of - d0]
  # A chunk from s ends after the first sentence that brings it to its target.
  end = np.minimum(s0 + np.searchsorted(ss, ss[:-1] + target, side="left"), doc_end)
  firsts, cur = [], ds[:-1][np.diff(ds) > 0]
  while cur.size:
    firsts.append(cur)
    nxt = end[cur - s0]
    cur = nxt[nxt < doc_end[cur - s0]]
  first = np.sort(np.concatenate(firsts)) if firsts else np.zeros([0], np.int64)
  local = first - s0
  keep = ss[end[local] - s0] > ss[local]  # Drops chunks of empty sentences only.
  first, local = first[keep], local[keep]
  return np.stack([doc_of[local], first, end[local], target[local]], axis=1).astype(np.int64)


def truncated_lengths(len_a: np.ndarray, len_b: np.ndarray, max_tokens: int):
  """Lengths after BERT's truncate_seq_pair, which trims the longer segment (ties: B) one token at a time."""
  excess = np.maximum(len_a + len_b - max_tokens, 0)
  a_longer = len_a > len_b
  balanced = excess > np.abs(len_a - len_b)  # Both end up trimmed, to within one token.
  fa = np.where(balanced, (max_tokens + 1) // 2, np.where(a_longer, len_a - excess, len_a))
  fb = np.where(balanced, max_tokens // 2, np.where(a_longer, len_b, len_b - excess))
  return fa, fb


class BertExamples(masking.MlmExamples):
  """Random access to an endless stream of BERT examples: `self[i]` for any i >= 0."""

  def __init__(
    self,
    docs: Documents,
    cfg: BertExampleConfig,
    vocab_size: int,
    seed: int,
    word_start: np.ndarray | None = None,
    special: SpecialTokens | None = None,
  ):
    """`special`: the tokenizer's special ids (default: the project's sentencepiece layout)."""
    if cfg.next_sentence_prediction and docs.num_docs < 2:
      raise PretrainError(
        f"next-sentence prediction needs >= 2 documents; the corpus has {docs.num_docs}"
      )
    super().__init__(
      "BERT", docs, cfg, vocab_size, seed, word_start, special
    )  # _nonempty_docs: random Bs' docs.
    doc_tokens = np.diff(docs.sentence_starts[docs.doc_starts])
    self._doc_rank = np.cumsum(doc_tokens > 0) - 1  # A nonempty doc's position in _nonempty_docs.
    if cfg.next_sentence_prediction and self._nonempty_docs.size < 2:
      raise PretrainError("next-sentence prediction needs >= 2 nonempty documents")
    first = self._plan(0)
    if not len(first[0]):
      raise PretrainError("the corpus yields no BERT instance (no tokens)")
    self._epochs = Epochs(len(first[0]), self._plan, first=first)

  @property
  def num_instances(self) -> int:
    """Chunks in the first epoch; every epoch has this many examples."""
    return self._epochs.num_per_epoch

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(plan [n, 4], slot -> plan row [N]) of an epoch; epoch 0's chunk count is N."""
    rng = np.random.default_rng([self.seed, epoch])
    plan = plan_instances(self._docs, self.cfg, rng)
    n = self.num_instances if epoch else len(plan)
    order = rng.permutation(len(plan))
    if len(plan):
      order = order[np.arange(n) % len(plan)]
    return plan, order

  def instances(self, indices: np.ndarray) -> np.ndarray:
    """int64 [B, 4]: the chunk (doc, first_sentence, end_sentence, target) each index reads."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    out = np.empty([idx.size, 4], np.int64)
    for g in self._epochs.groups(idx):
      plan, order = g.plan
      out[g.rows] = plan[order[g.slots]]
    return out

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples of `indices` stacked: each field [B, ...]; row b equals self[indices[b]]."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    cfg, ss, ds, sp = self.cfg, self._docs.sentence_starts, self._docs.doc_starts, self.special
    doc, first, end, target = self.instances(idx).T
    b, length = idx.size, cfg.max_seq_length
    keys = keyed_random.row_keys(self.seed, idx)
    u = keyed_random.uniform(keyed_random.bits(keys, np.arange(4)))  # [B, 4]

    if cfg.next_sentence_prediction:
      n_sent = end - first
      a_end = (
        first + 1 + (u[:, _SPLIT] * np.maximum(n_sent - 1, 0)).astype(np.int64)
      )  # A: 1..n-1 sentences.
      is_random = (n_sent == 1) | (u[:, _RANDOM_NEXT] < 0.5)
      a0, a1 = ss[first], ss[a_end]
      b0, b1 = ss[a_end], ss[end]  # The true continuation.
      # A random other document, from a random sentence on, up to the target length.
      m = self._nonempty_docs.size
      r = (u[:, _RANDOM_DOC] * (m - 1)).astype(np.int64)
      rdoc = self._nonempty_docs[r + (r >= self._doc_rank[doc])]
      d0, d1 = ds[rdoc], ds[rdoc + 1]
      rstart = d0 + (u[:, _RANDOM_START] * (d1 - d0)).astype(np.int64)
      want = ss[rstart] + target - (a1 - a0)
      rend = np.clip(np.searchsorted(ss, want, side="left"), rstart + 1, d1)
      b0 = np.where(is_random, ss[rstart], b0)
      b1 = np.where(is_random, ss[rend], b1)
      nsp_labels = is_random.astype(np.int32)
    else:
      a0, a1 = ss[first], ss[end]
      b0 = b1 = a1
      nsp_labels = np.zeros([b], np.int32)

    len_a, len_b = truncated_lengths(a1 - a0, b1 - b0, cfg.max_num_tokens)
    # truncate_seq_pair removes each token from the front or the back by a fair coin.
    a0 = a0 + keyed_random.binomial_half(keys, a1 - a0 - len_a, _TRUNC_A)
    b0 = b0 + keyed_random.binomial_half(keys, b1 - b0 - len_b, _TRUNC_B)

    col = np.arange(length)[None, :]
    b_col = (len_a + 2)[:, None]  # B's first column.
    in_a = (col >= 1) & (col <= len_a[:, None])
    in_b = (col >= b_col) & (col < b_col + len_b[:, None])
    text = in_a | in_b
    src = np.where(in_a, a0[:, None] - 1 + col, b0[:, None] - b_col + col)
    ids = np.full([b, length], sp.pad, np.int32)
    ids[text] = self._docs.take(src[text])  # The batch's one read.
    rows = np.arange(b)
    ids[:, 0] = sp.cls
    ids[rows, len_a + 1] = sp.sep
    if cfg.next_sentence_prediction:
      n_real = len_a + len_b + 3
      ids[rows, n_real - 1] = sp.sep
      segment_ids = ((col >= b_col) & (col < n_real[:, None])).astype(np.int32)
    else:
      n_real = len_a + 2
      segment_ids = np.zeros([b, length], np.int32)
    input_mask = (col < n_real[:, None]).astype(np.int32)

    input_ids, masked = self._mask(ids, text, idx)
    return {
      "input_ids": input_ids,
      "input_mask": input_mask,
      "segment_ids": segment_ids,
      **masked,
      "next_sentence_labels": nsp_labels,
    }
