"""Every example builder reads tokens only through Documents.take: one call per batch, of the positions the
batch shows, and batches bit-identical to those over the in-memory TokenizedDocs."""

import numpy as np
import pytest

from pretrain.data import streams
from pretrain.data.tokenized import TokenizedDocs
from pretrain.families.bert import examples as be
from pretrain.families.gpt2 import examples as ce
from pretrain.families.roberta import examples as rx
from pretrain.families.t5 import task as t5_task

VOCAB = 1000


class LazyDocs:
  """Documents over a TokenizedDocs with no `tokens`: every read is a counted, recorded `take`."""

  def __init__(self, docs: TokenizedDocs):
    self._docs = docs
    self.sentence_starts = docs.sentence_starts
    self.doc_starts = docs.doc_starts
    self.calls = []  # The positions of each take, flattened.

  num_docs = property(lambda self: self._docs.num_docs)
  num_sentences = property(lambda self: self._docs.num_sentences)
  num_tokens = property(lambda self: self._docs.num_tokens)
  max_token_id = property(lambda self: self._docs.max_token_id)

  def take(self, positions):
    positions = np.asarray(positions)
    assert positions.dtype.kind == "i"
    flat = positions.reshape(-1)
    assert not flat.size or (flat.min() >= 0 and flat.max() < self.num_tokens)
    self.calls.append(flat.copy())
    return self._docs.take(positions)


def _random_docs(seed=0, n_docs=60):
  """Documents of 1-20 sentences of 1-40 ids in [5, VOCAB): ~13k tokens, far more than a batch reads."""
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [
      [rng.integers(5, VOCAB, rng.integers(1, 41)).tolist() for _ in range(rng.integers(1, 21))]
      for _ in range(n_docs)
    ]
  )


WORD_START = np.random.default_rng(1).random(VOCAB) < 0.6
T5_CFG = t5_task.T5ExampleConfig(inputs_length=32)

# name: (build(docs) -> examples, most positions one row may read).
FAMILIES = {
  "bert_nsp": (
    lambda d: be.BertExamples(
      d, be.BertExampleConfig(max_seq_length=64, max_predictions_per_seq=10), VOCAB, seed=3
    ),
    64,
  ),
  "bert_nsp_whole_word": (
    lambda d: be.BertExamples(
      d,
      be.BertExampleConfig(max_seq_length=64, max_predictions_per_seq=10, whole_word_masking=True),
      VOCAB,
      seed=3,
      word_start=WORD_START,
    ),
    64,
  ),
  "bert_no_nsp": (
    lambda d: be.BertExamples(
      d,
      be.BertExampleConfig(
        max_seq_length=48, max_predictions_per_seq=8, next_sentence_prediction=False
      ),
      VOCAB,
      seed=4,
    ),
    48,
  ),
  "roberta": (
    lambda d: rx.RobertaExamples(
      d, rx.RobertaExampleConfig(max_seq_length=32, max_predictions_per_seq=6), VOCAB, seed=5
    ),
    32,
  ),
  "causal_chunked": (
    lambda d: ce.CausalExamples(d, ce.CausalExampleConfig(seq_len=32), VOCAB, seed=6),
    33,
  ),
  "causal_packed": (
    lambda d: ce.CausalExamples(d, ce.CausalExampleConfig(seq_len=32, packing=True), VOCAB, seed=7),
    64,
  ),  # Up to seq_len inputs + one per piece.
  "t5": (
    lambda d: t5_task.T5Examples(d, T5_CFG, first_sentinel=VOCAB + 99, num_sentinels=100, seed=8),
    T5_CFG.span_lengths().tokens_length,
  ),
}


def _per_epoch(ex) -> int:
  return getattr(ex, "num_instances", None) or getattr(ex, "num_chunks", None) or len(ex)


@pytest.fixture(scope="module")
def docs():
  return _random_docs()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batches_read_lazily_are_the_in_memory_ones(family, docs):
  build, row_width = FAMILIES[family]
  lazy = LazyDocs(docs)
  assert not hasattr(lazy, "tokens")
  eager, ex = build(docs), build(lazy)
  assert lazy.calls == []  # Plans need no tokens.
  n = _per_epoch(ex)
  assert n == _per_epoch(eager) and n > 20
  batches = [
    np.arange(8),  # Epoch 0.
    3 * n + np.array([5, 0, 7, 2, 11, 1]),  # A later epoch.
    np.arange(n - 4, n + 4),  # Across the 0 | 1 boundary.
    np.array([7 * n + 3, 1, 2 * n + 9, 1, 5 * n]),  # Three epochs and a repeat.
    np.array([2 * n - 1]),
  ]
  for idx in batches:
    lazy.calls.clear()
    got, want = ex.batch(idx), eager.batch(idx)
    assert len(lazy.calls) == 1, (family, idx)  # One read per batch.
    assert 0 < lazy.calls[0].size <= idx.size * row_width < docs.num_tokens // 10
    assert got.keys() == want.keys()
    for k in want:
      assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{family} {k} {idx}")
  lazy.calls.clear()
  one = ex[n + 2]
  assert len(lazy.calls) == 1 and lazy.calls[0].size <= row_width
  for k, v in eager[n + 2].items():
    np.testing.assert_array_equal(one[k], v)


def test_rows_read_only_their_own_tokens():
  """With id = 5 + position, the positions a BERT or causal batch reads are exactly the ids it shows."""
  d = _random_docs(2)
  unique = TokenizedDocs(
    np.arange(5, 5 + d.num_tokens, dtype=np.int32), d.sentence_starts, d.doc_starts
  )
  lazy = LazyDocs(unique)
  bert = be.BertExamples(
    lazy, be.BertExampleConfig(max_seq_length=64), 5 + unique.num_tokens, seed=0
  )
  lazy.calls.clear()
  b = bert.batch(np.arange(16))
  ids = b["input_ids"].copy()
  rows, used = np.nonzero(b["masked_lm_weights"] > 0)
  ids[rows, b["masked_lm_positions"][rows, used]] = b["masked_lm_ids"][rows, used]  # Unmasked.
  np.testing.assert_array_equal(
    lazy.calls[0], ids[ids >= 5] - 5
  )  # Row order; [CLS] [SEP] [PAD] read none.
  causal = ce.CausalExamples(
    lazy, ce.CausalExampleConfig(seq_len=32), 5 + unique.num_tokens, seed=0
  )
  lazy.calls.clear()
  c = causal.batch(np.arange(4))
  window = np.concatenate([c["input_ids"], c["target_ids"][:, -1:]], axis=1)
  np.testing.assert_array_equal(
    lazy.calls[0], window[window != ce.EOT_ID] - 5
  )  # In row order, no EOTs.


def test_streams_map_positions_to_tokens_or_separators():
  docs = TokenizedDocs.from_lists([[[5, 6], [7]], [[8]], [[9, 10]]])
  between = streams.doc_stream(docs, np.array([2, 0, 1]))  # RoBERTa's: d2 SEP d0 SEP d1.
  assert between.length == 8
  np.testing.assert_array_equal(between.positions(np.arange(8)), [4, 5, -1, 0, 1, 2, -1, 3])
  lazy = LazyDocs(docs)
  np.testing.assert_array_equal(
    between.token_ids(np.array([[0, 2], [7, 3]]), lazy, 3), [[9, 3], [8, 5]]
  )
  assert len(lazy.calls) == 1 and lazy.calls[0].tolist() == [4, 3, 0]  # Separators read nothing.
  around = streams.doc_stream(
    docs, np.arange(3), first_sep=True, last_sep=True
  )  # EOT d0 EOT d1 EOT d2 EOT.
  assert around.length == 10
  ids = around.token_ids(np.arange(10), docs.tokens, 3)  # A flat token array serves too.
  np.testing.assert_array_equal(ids, [3, 5, 6, 7, 3, 8, 3, 9, 10, 3])
