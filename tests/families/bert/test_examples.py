"""BERT examples: chunk plans, [CLS] A [SEP] B [SEP] layout, NSP, determinism, masking."""

import dataclasses
import time

import numpy as np
import pytest

from pretrain.data.tokenized import TokenizedDocs
from pretrain.errors import PretrainError
from pretrain.objectives import masking
from pretrain.families.bert import examples as be

from mlm_examples import unique_ids, unmasked  # pylint: disable=g-import-not-at-top,wrong-import-position

CFG = be.BertExampleConfig()
FIELDS = {  # name: (shape, dtype) at L = 128, P = 20.
  "input_ids": ((128,), np.int32),
  "input_mask": ((128,), np.int32),
  "segment_ids": ((128,), np.int32),
  "masked_lm_positions": ((20,), np.int32),
  "masked_lm_ids": ((20,), np.int32),
  "masked_lm_weights": ((20,), np.float32),
  "next_sentence_labels": ((), np.int32),
}


def _random_docs(seed=0, n_docs=50, low=5, high=1000):
  """Documents of 3-20 sentences of 5-40 ids."""
  rng = np.random.default_rng(seed)
  return TokenizedDocs.from_lists(
    [
      [rng.integers(low, high, rng.integers(5, 41)).tolist() for _ in range(rng.integers(3, 21))]
      for _ in range(n_docs)
    ]
  )


@pytest.fixture(scope="module")
def docs():
  return _random_docs()


@pytest.fixture(scope="module")
def unique():
  """The same shape of corpus, with token id = 5 + its position: every id names its source."""
  return unique_ids(_random_docs(1))


def _vocab(docs):
  return int(docs.tokens.max()) + 1


def _split(ex, nsp=True):
  """(A, B) token ids of an example, checking the layout on the way."""
  ids, n = unmasked(ex), int(ex["input_mask"].sum())
  length = ids.shape[0]
  assert 0 < n <= length
  np.testing.assert_array_equal(ex["input_mask"], np.arange(length) < n)
  assert (
    (ids[n:] == 0).all() and (ex["input_ids"][n:] == 0).all() and (ex["segment_ids"][n:] == 0).all()
  )
  assert ids[0] == 2 and ids[n - 1] == 3
  seps = np.flatnonzero(ids[:n] == 3)
  if not nsp:
    assert (
      seps.tolist() == [n - 1]
      and (ex["segment_ids"] == 0).all()
      and ex["next_sentence_labels"] == 0
    )
    return ids[1 : n - 1], ids[:0]
  assert len(seps) == 2
  j = seps[0]
  np.testing.assert_array_equal(ex["segment_ids"][:n], np.arange(n) > j)
  a, b = ids[1:j], ids[j + 1 : n - 1]
  assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= CFG.max_num_tokens
  return a, b


def _check_shapes(ex):
  assert set(ex) == set(FIELDS)
  for k, (shape, dtype) in FIELDS.items():
    assert ex[k].shape == shape and ex[k].dtype == dtype, k


def test_truncated_lengths_match_bert_loop():
  for max_tokens in range(1, 30):
    for la in range(0, 30):
      for lb in range(0, 30):
        a, b = la, lb
        while a + b > max_tokens:  # truncate_seq_pair, counting only.
          if a > b:
            a -= 1
          else:
            b -= 1
        got = be.truncated_lengths(np.array([la]), np.array([lb]), max_tokens)
        assert (int(got[0][0]), int(got[1][0])) == (a, b), (la, lb, max_tokens)


@pytest.mark.parametrize("block", [None, 16], ids=["one_block", "blocks_of_16_sentences"])
def test_plan_chunks_documents_like_bert(docs, block, monkeypatch):
  if block:
    monkeypatch.setattr(be, "_PLAN_BLOCK", block)
  ss, ds = docs.sentence_starts, docs.doc_starts
  short, n = 0, 0
  for seed in range(40):
    plan = be.plan_instances(docs, CFG, np.random.default_rng(seed))
    assert plan.dtype == np.int64 and plan.shape[1] == 4
    doc, first, end, target = plan.T
    # Chunks tile every document in order.
    for d in range(docs.num_docs):
      mine = plan[doc == d]
      assert mine[0, 1] == ds[d] and mine[-1, 2] == ds[d + 1]
      np.testing.assert_array_equal(mine[1:, 1], mine[:-1, 2])
    assert (end > first).all()
    size = ss[end] - ss[first]
    at_doc_end = end == ds[doc + 1]
    assert ((size >= target) | at_doc_end).all()  # Full, or the document ran out...
    assert (ss[end - 1] - ss[first] < target).all()  # ...and no sentence more than needed.
    assert ((target >= 2) & (target <= CFG.max_num_tokens)).all()
    short += int((target < CFG.max_num_tokens).sum())
    n += len(plan)
  # 10% draw a uniform target in [2, 125]; 1 in 124 of those draws 125 itself.
  assert n > 5000
  assert abs(short / n - 0.1 * 123 / 124) < 0.015


def test_plan_is_fast():
  rng = np.random.default_rng(0)
  n_sent = rng.integers(5, 36, 5000)
  lens = rng.integers(1, 30, n_sent.sum())
  docs = TokenizedDocs(
    np.full(lens.sum(), 7, np.int32),
    np.concatenate([[0], np.cumsum(lens)]),
    np.concatenate([[0], np.cumsum(n_sent)]),
  )
  assert docs.num_tokens > 1_400_000 and docs.num_sentences > 95_000
  t = time.perf_counter()
  plan = be.plan_instances(docs, CFG, rng)
  assert time.perf_counter() - t < 1.0
  assert len(plan) > 10_000


def test_examples_layout_and_sources(unique):
  ss, ds = unique.sentence_starts, unique.doc_starts
  doc_of_token = np.repeat(np.arange(unique.num_docs), np.diff(ss[ds]))
  sentence_bounds = set(ss.tolist())
  ex = be.BertExamples(unique, CFG, _vocab(unique), seed=0)
  batch = ex.batch(np.arange(2000))
  counts = {"same_untruncated": 0, "random_untruncated": 0, "truncated": 0}
  split_at = []  # Where A ends in its chunk, as a fraction of the possible split points.
  for i in range(2000):
    e = {k: v[i] for k, v in batch.items()}
    a, b = _split(e)
    pa, pb = a.astype(np.int64) - 5, b.astype(np.int64) - 5  # Positions in the corpus.
    assert (np.diff(pa) == 1).all() and (np.diff(pb) == 1).all()  # Each a contiguous span.
    doc_a = doc_of_token[pa[0]]
    assert doc_of_token[pa[-1]] == doc_a and doc_of_token[pb[0]] == doc_of_token[pb[-1]]
    d, first, end, target = ex.instances([i])[0]
    assert doc_a == d and ss[first] <= pa[0] and pa[-1] < ss[end]  # A lies in its chunk.
    truncated = len(a) + len(b) == CFG.max_num_tokens
    if e["next_sentence_labels"] == 0:
      # B is the text after A in the same document: only truncation lies between them,
      # and they split at a sentence boundary.
      assert doc_of_token[pb[0]] == doc_a and pb[0] > pa[-1] and pb[-1] < ss[end]
      split = np.flatnonzero((ss >= pa[-1] + 1) & (ss <= pb[0]))
      assert split.size
      if split.size == 1 and end - first >= 3:
        split_at.append((split[0] - first - 1) / (end - first - 2))
      if not truncated:
        assert pb[0] == pa[-1] + 1 and pa[0] == ss[first] and pb[-1] + 1 == ss[end]
        counts["same_untruncated"] += 1
    else:
      assert doc_of_token[pb[0]] != doc_a
      if not truncated:
        assert (
          pa[0] in sentence_bounds and pb[0] in sentence_bounds and pa[-1] + 1 in sentence_bounds
        )
        # B: sentences from a random one on, until B reaches target - len(A) or its document ends.
        b_end = pb[-1] + 1
        assert b_end in sentence_bounds
        assert b_end - pb[0] >= target - len(a) or b_end == ss[ds[doc_of_token[pb[0]] + 1]]
        last = ss[np.searchsorted(ss, b_end) - 1]
        assert last == pb[0] or last - pb[0] < target - len(a)
        counts["random_untruncated"] += 1
    counts["truncated"] += truncated
  assert min(counts.values()) > 50, counts
  assert len(split_at) > 200 and abs(np.mean(split_at) - 0.5) < 0.05  # A/B split uniform.


def test_nsp_ratio(docs):
  ex = be.BertExamples(docs, CFG, _vocab(docs), seed=3)
  idx = np.arange(1000, 3000)
  labels = ex.batch(idx)["next_sentence_labels"]
  single = (ex.instances(idx)[:, 2] - ex.instances(idx)[:, 1]) == 1
  assert (labels[single] == 1).all()  # One-sentence chunks have no true B (as BERT).
  assert abs(labels[~single].mean() - 0.5) < 0.03
  assert abs(labels.mean() - (0.5 + 0.5 * single.mean())) < 0.03


def test_truncation_trims_front_and_back(unique):
  cfg = dataclasses.replace(CFG, next_sentence_prediction=False, short_seq_prob=0.0)
  ex = be.BertExamples(unique, cfg, _vocab(unique), seed=0)
  ss = unique.sentence_starts
  front, removed = 0, 0
  batch = ex.batch(np.arange(3000))
  for i, chunk in enumerate(ex.instances(np.arange(3000))):
    a, _ = _split({k: v[i] for k, v in batch.items()}, nsp=False)
    start, stop = ss[chunk[1]], ss[chunk[2]]
    assert len(a) == min(stop - start, cfg.max_num_tokens)
    front += int(a[0] - 5 - start)
    removed += int(stop - start - len(a))
  assert removed > 5000 and abs(front / removed - 0.5) < 0.05


def test_masks_in_examples(docs):
  ex = be.BertExamples(docs, CFG, _vocab(docs), seed=0)
  batch = ex.batch(np.arange(3000))
  ids, w = _unmasked_batch(batch), batch["masked_lm_weights"]
  content = (batch["input_mask"] > 0) & (ids >= 5)
  assert (w.sum(1) == masking.num_to_predict(content.sum(1), 0.15, 20)).all()
  pos = batch["masked_lm_positions"][w > 0]
  rows = np.repeat(np.arange(3000), (w > 0).sum(1))
  assert content[rows, pos].all()  # Never [CLS], [SEP] or padding.
  new = batch["input_ids"][rows, pos]
  assert abs((new == 4).mean() - 0.8) < 0.02


def _unmasked_batch(batch):
  ids = batch["input_ids"].copy()
  rows, slots = np.nonzero(batch["masked_lm_weights"])
  ids[rows, batch["masked_lm_positions"][rows, slots]] = batch["masked_lm_ids"][rows, slots]
  return ids


def test_special_ids_in_text_are_never_masked():
  docs = _random_docs(2, low=0, high=40)  # Text full of ids 0..4.
  ex = be.BertExamples(docs, dataclasses.replace(CFG, masked_lm_prob=0.5), 40, seed=0)
  batch = ex.batch(np.arange(500))
  used = batch["masked_lm_weights"] > 0
  assert used.sum() > 1000 and (batch["masked_lm_ids"][used] >= 5).all()


def test_whole_word_masking(docs):
  vocab = _vocab(docs)
  word_start = np.random.default_rng(0).random(vocab) < 0.5
  word_start[:5] = True
  cfg = dataclasses.replace(CFG, whole_word_masking=True)
  ex = be.BertExamples(docs, cfg, vocab, seed=0, word_start=word_start)
  batch = ex.batch(np.arange(500))
  ids = _unmasked_batch(batch)
  n_words = 0
  for i in range(500):
    maskable = (batch["input_mask"][i] > 0) & (ids[i] >= 5)
    chosen = np.zeros(128, bool)
    used = batch["masked_lm_weights"][i] > 0
    chosen[batch["masked_lm_positions"][i][used]] = True
    starts = word_start[ids[i]] | ~np.concatenate([[False], maskable[:-1]])
    word = np.cumsum(starts & maskable)
    for w in np.unique(word[chosen]):
      assert chosen[maskable & (word == w)].all()  # Every piece of a chosen word.
      n_words += 1
  assert n_words > 2000
  with pytest.raises(PretrainError, match="word_start"):
    be.BertExamples(docs, cfg, vocab, seed=0)


def test_determinism(docs):
  vocab = _vocab(docs)
  ex, same = be.BertExamples(docs, CFG, vocab, seed=5), be.BertExamples(docs, CFG, vocab, seed=5)
  other = be.BertExamples(docs, CFG, vocab, seed=6)
  idx = np.array([0, 17, 4242, 99, 10**9, 3 * 10**12])
  batch = ex.batch(idx)
  for r, i in enumerate(idx.tolist()):
    e = ex[i]
    _check_shapes(e)
    for k in FIELDS:
      np.testing.assert_array_equal(e[k], batch[k][r])  # Batch rows are single examples...
      np.testing.assert_array_equal(e[k], same[i][k])  # ...and fixed by (seed, index).
  # Any split of the indices over processes gives the same rows.
  part = ex.batch(idx[[4, 1]])
  for k in FIELDS:
    np.testing.assert_array_equal(part[k], batch[k][[4, 1]])
  assert not np.array_equal(other.batch(idx)["input_ids"], batch["input_ids"])


def test_new_epoch_same_chunk_new_masks(unique):
  cfg = dataclasses.replace(CFG, next_sentence_prediction=False)
  ex = be.BertExamples(unique, cfg, _vocab(unique), seed=0)
  n = ex.num_instances
  ss = unique.sentence_starts
  e0, e1 = ex.instances(np.arange(n)), ex.instances(np.arange(n, 2 * n))
  fits = (ss[e0[:, 2]] - ss[e0[:, 1]]) <= cfg.max_num_tokens  # Untruncated chunks.
  key1 = {tuple(c[:3]): j for j, c in enumerate(e1.tolist())}
  pairs = [
    (i, n + key1[tuple(c[:3])])
    for i, c in enumerate(e0.tolist())
    if fits[i] and tuple(c[:3]) in key1
  ]
  assert len(pairs) > 20
  for i, j in pairs:
    x, y = ex[i], ex[j]
    np.testing.assert_array_equal(unmasked(x), unmasked(y))  # The same text...
    assert not np.array_equal(x["masked_lm_positions"], y["masked_lm_positions"])  # ...masked anew.


def test_epochs_have_num_instances_slots(docs):
  ex = be.BertExamples(docs, CFG, _vocab(docs), seed=1)
  n = ex.num_instances
  assert n == len(be.plan_instances(docs, CFG, np.random.default_rng([1, 0])))
  first = ex.instances(np.arange(n))
  assert len({tuple(r) for r in first.tolist()}) == n  # Epoch 0 is a permutation of its plan.
  far = ex.instances(np.arange(7 * n, 8 * n))
  plan7 = {tuple(r) for r in be.plan_instances(docs, CFG, np.random.default_rng([1, 7])).tolist()}
  assert {tuple(r) for r in far.tolist()} <= plan7


def test_without_nsp(docs):
  cfg = dataclasses.replace(CFG, next_sentence_prediction=False)
  ex = be.BertExamples(docs, cfg, _vocab(docs), seed=0)
  batch = ex.batch(np.arange(300))
  assert (batch["next_sentence_labels"] == 0).all() and (batch["segment_ids"] == 0).all()
  lengths = []
  for i in range(300):
    a, _ = _split({k: v[i] for k, v in batch.items()}, nsp=False)
    lengths.append(len(a))
  assert max(lengths) == 126  # max_seq_length - 2: no room kept for B.
  # A single document is enough without NSP.
  one = be.BertExamples(TokenizedDocs.from_lists([[[5, 6, 7], [8, 9]]]), cfg, 10, seed=0)
  for i in range(50):
    a, _ = _split(one[i], nsp=False)
    assert a.tolist() in ([5, 6, 7, 8, 9], [5, 6, 7], [8, 9])  # Chunks (short targets split it).


def test_bad_input(docs):
  one = TokenizedDocs.from_lists([[[5, 6, 7], [8, 9]]])
  with pytest.raises(PretrainError, match=">= 2 documents"):
    be.BertExamples(one, CFG, 10, seed=0)
  empty = TokenizedDocs.from_lists([])
  with pytest.raises(PretrainError, match="no BERT instance"):
    be.BertExamples(empty, dataclasses.replace(CFG, next_sentence_prediction=False), 10, seed=0)
  with pytest.raises(PretrainError, match="vocab_size"):
    be.BertExamples(docs, CFG, 100, seed=0)
  with pytest.raises(PretrainError, match="max_predictions_per_seq"):
    be.BertExampleConfig(max_predictions_per_seq=0)
  with pytest.raises(PretrainError, match="max_seq_length"):
    be.BertExampleConfig(max_seq_length=4)
  with pytest.raises(IndexError):
    be.BertExamples(docs, CFG, _vocab(docs), seed=0)[-1]
