"""MLM masking: budget, 80/10/10 statistics, whole words, keyed batches."""

import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random
from pretrain.objectives import masking


def mask_tokens(
  ids: np.ndarray,
  maskable: np.ndarray,
  rng: np.random.Generator,
  *,
  masked_lm_prob: float,
  max_predictions: int,
  vocab_size: int,
  word_start: np.ndarray | None = None,
  mask_id: int = masking.MASK_ID,
  random_ids: np.ndarray | None = None,
):
  """Masks one sequence: the per-row reference of masking.mask_batch (same statistics, other draws).

  Args:
    ids: int [L] token ids.
    maskable: bool [L]; False for specials and padding.
    rng: the randomness.
    masked_lm_prob: fraction of maskable tokens to predict.
    max_predictions: P, the cap and the output length.
    vocab_size: the vocabulary size.
    word_start: bool [L] or None; when given, whole words are masked.
    mask_id: the [MASK] id.
    random_ids: the non-special ids, which random replacements are drawn from
      uniformly (default: NUM_SPECIAL .. vocab_size - 1).

  Returns:
    (input_ids int32 [L], positions int32 [P] ascending, labels int32 [P],
    weights float32 [P]), padded with 0 / 0 / 0.0.
  """
  ids = np.asarray(ids)
  maskable = np.asarray(maskable, bool)
  masking._check(max_predictions, ids.shape[0])
  replacements = masking._random_ids(random_ids, vocab_size)
  cand = np.flatnonzero(maskable)
  k = int(masking.num_to_predict(cand.size, masked_lm_prob, max_predictions))
  if word_start is None:
    chosen = rng.permutation(cand)[:k]
  else:
    starts = masking._word_starts(maskable, np.asarray(word_start, bool))[cand]
    bounds = np.append(np.flatnonzero(starts), cand.size)  # Word w = cand[bounds[w]:bounds[w + 1]].
    picked, count = [], 0
    for w in rng.permutation(bounds.size - 1).tolist():
      if count >= k:
        break
      size = int(bounds[w + 1] - bounds[w])
      if count + size > k:
        continue
      picked.append(cand[bounds[w] : bounds[w + 1]])
      count += size
    chosen = np.concatenate(picked) if picked else cand[:0]
  chosen = np.sort(chosen)
  n = chosen.size
  u = rng.random(n)
  random = replacements[rng.integers(0, len(replacements), n)]
  input_ids = ids.astype(np.int32)
  new = np.where(
    u < masking._MASK_PROB,
    mask_id,
    np.where(u < masking._MASK_PROB + masking._KEEP_PROB, ids[chosen], random),
  )
  input_ids[chosen] = new
  positions = np.zeros([max_predictions], np.int32)
  labels = np.zeros([max_predictions], np.int32)
  weights = np.zeros([max_predictions], np.float32)
  positions[:n] = chosen
  labels[:n] = ids[chosen]
  weights[:n] = 1.0
  return input_ids, positions, labels, weights


VOCAB = 1000
MASK = masking.MASK_ID


def _rows(rng, n, length=128):
  """Sequences laid out like BERT's: [CLS] text [SEP] text [SEP] [PAD]..., specials not maskable."""
  ids = rng.integers(5, VOCAB, (n, length)).astype(np.int32)
  maskable = np.zeros((n, length), bool)
  for r in range(n):
    real = int(rng.integers(8, length + 1))
    sep = int(rng.integers(2, real - 2))
    ids[r, 0], ids[r, sep], ids[r, real - 1] = 2, 3, 3
    ids[r, real:] = 0
    maskable[r, 1 : real - 1] = True
    maskable[r, sep] = False
  return ids, maskable


def _mask_each(ids, maskable, rng, word_start=None, **kw):
  outs = [
    mask_tokens(
      ids[r],
      maskable[r],
      rng,
      vocab_size=VOCAB,
      word_start=None if word_start is None else word_start[r],
      **kw,
    )
    for r in range(len(ids))
  ]
  return tuple(np.stack(x) for x in zip(*outs))


def _mask_keyed(ids, maskable, rng, word_start=None, **kw):
  keys = keyed_random.row_keys(int(rng.integers(2**31)), np.arange(len(ids)))
  return masking.mask_batch(ids, maskable, keys, vocab_size=VOCAB, word_start=word_start, **kw)


MASKERS = pytest.mark.parametrize(
  "mask_fn", [_mask_each, _mask_keyed], ids=["mask_tokens", "mask_batch"]
)


def _check_layout(ids, maskable, out, p):
  """Invariants of any masking output; returns the chosen-position mask [N, L]."""
  input_ids, positions, labels, weights = out
  n, length = ids.shape
  assert input_ids.shape == (n, length) and input_ids.dtype == np.int32
  assert positions.shape == labels.shape == weights.shape == (n, p)
  assert positions.dtype == labels.dtype == np.int32 and weights.dtype == np.float32
  used = weights > 0
  assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
  counts = used.sum(1)
  assert (used == (np.arange(p)[None] < counts[:, None])).all()  # Used slots first.
  assert (positions[~used] == 0).all() and (labels[~used] == 0).all()
  rows = np.repeat(np.arange(n), counts)
  pos = positions[used]
  assert np.all(
    np.diff(np.where(used, positions, length + 1), axis=1)[used[:, 1:]] > 0
  )  # Ascending.
  assert maskable[rows, pos].all()  # Specials and padding never chosen.
  assert (labels[used] == ids[rows, pos]).all()
  chosen = np.zeros_like(maskable)
  chosen[rows, pos] = True
  assert (input_ids[~chosen] == ids[~chosen]).all()  # Nothing else changes.
  new = input_ids[chosen]
  assert ((new == MASK) | ((new >= 5) & (new < VOCAB))).all()
  return chosen


def _masked_rows(mask_fn, seed, n, masked_lm_prob, max_predictions):
  """n random rows masked by mask_fn, their layout checked: (ids, maskable, mask_fn's output, chosen positions)."""
  rng = np.random.default_rng(seed)
  ids, maskable = _rows(rng, n)
  out = mask_fn(ids, maskable, rng, masked_lm_prob=masked_lm_prob, max_predictions=max_predictions)
  return ids, maskable, out, _check_layout(ids, maskable, out, max_predictions)


def test_num_to_predict_follows_bert():
  got = masking.num_to_predict(np.array([0, 1, 3, 4, 10, 100, 1000]), 0.15, 20)
  assert got.tolist() == [0, 1, 1, 1, 2, 15, 20]
  assert int(masking.num_to_predict(10, 0.25, 20)) == round(2.5) == 2  # Half to even, as Python.


@MASKERS
def test_statistics(mask_fn):
  ids, maskable, out, chosen = _masked_rows(
    mask_fn, 0, 10_000, masked_lm_prob=0.15, max_predictions=40
  )
  k = masking.num_to_predict(maskable.sum(1), 0.15, 40)
  assert (chosen.sum(1) == k).all()  # Exactly the budget (below the cap here).
  assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.005
  new, old = out[0][chosen], ids[chosen]
  total = chosen.sum()
  assert total > 90_000
  assert abs((new == MASK).mean() - 0.8) < 0.015
  assert abs(((new != MASK) & (new == old)).mean() - 0.1) < 0.015
  randomized = new[(new != MASK) & (new != old)]
  assert abs(randomized.size / total - 0.1) < 0.015
  assert randomized.min() >= 5 and randomized.max() < VOCAB
  assert abs(randomized.mean() - (5 + VOCAB - 1) / 2) < 15  # Uniform over [5, VOCAB).
  # Chosen positions spread evenly over the maskable ones.
  by_col = chosen.sum(0)[1:60] / maskable.sum(0)[1:60]
  assert np.abs(by_col - 0.15).max() < 0.03


@MASKERS
def test_cap_at_max_predictions(mask_fn):
  _, maskable, out, chosen = _masked_rows(mask_fn, 1, 300, masked_lm_prob=0.5, max_predictions=5)
  assert (chosen.sum(1) == np.minimum(5, np.maximum(1, np.rint(maskable.sum(1) * 0.5)))).all()
  assert (out[3].sum(1)[maskable.sum(1) >= 10] == 5).all()


@MASKERS
def test_nothing_maskable(mask_fn):
  ids = np.array([[2, 3, 3, 0, 0, 0]], np.int32)
  out = mask_fn(
    ids, np.zeros_like(ids, bool), np.random.default_rng(0), masked_lm_prob=0.15, max_predictions=3
  )
  assert (out[0] == ids).all() and not out[3].any()


def _words(maskable_row, word_start_row):
  """Whole-word candidates of one row, as lists of positions (independent of the code under test)."""
  words = []
  for i in np.flatnonzero(maskable_row).tolist():
    if word_start_row[i] or i == 0 or not maskable_row[i - 1]:
      words.append([i])
    else:
      words[-1].append(i)
  return words


@MASKERS
def test_whole_word_masking(mask_fn):
  rng = np.random.default_rng(2)
  ids, maskable = _rows(rng, 1500)
  word_start = rng.random(ids.shape) < 0.4  # Words of 1-8+ pieces.
  p = 20
  out = mask_fn(ids, maskable, rng, word_start=word_start, masked_lm_prob=0.15, max_predictions=p)
  chosen = _check_layout(ids, maskable, out, p)
  k = masking.num_to_predict(maskable.sum(1), 0.15, p)
  fill = []
  for r in range(len(ids)):
    n_chosen = int(chosen[r].sum())
    assert n_chosen <= k[r]
    for w in _words(maskable[r], word_start[r]):
      picked = chosen[r, w]
      assert picked.all() or not picked.any()  # Whole words only.
      # BERT skips a word that would overshoot and goes on: any word left out did not fit.
      if not picked.any():
        assert len(w) > k[r] - n_chosen
    fill.append(n_chosen / k[r])
  assert np.mean(fill) > 0.95
  new, old = out[0][chosen], ids[chosen]
  assert abs((new == MASK).mean() - 0.8) < 0.02  # 80/10/10 is per piece, as in BERT.
  assert abs(((new != MASK) & (new == old)).mean() - 0.1) < 0.02


def test_whole_word_statistics_agree():
  """mask_tokens and mask_batch pick whole words alike: same mean count and word-length mix."""
  rng = np.random.default_rng(3)
  ids, maskable = _rows(rng, 3000)
  word_start = rng.random(ids.shape) < 0.4
  kw = dict(word_start=word_start, masked_lm_prob=0.15, max_predictions=20)
  a = _mask_each(ids, maskable, rng, **kw)[3].sum(1)
  b = _mask_keyed(ids, maskable, rng, **kw)[3].sum(1)
  assert abs(a.mean() - b.mean()) < 0.1


def test_keyed_rows_do_not_depend_on_the_batch():
  rng = np.random.default_rng(4)
  ids, maskable = _rows(rng, 16)
  keys = keyed_random.row_keys(7, np.arange(100, 116))
  kw = dict(masked_lm_prob=0.15, max_predictions=20, vocab_size=VOCAB)
  for ws in (None, rng.random(ids.shape) < 0.5):
    full = masking.mask_batch(ids, maskable, keys, word_start=ws, **kw)
    sub = [5, 2, 11]
    part = masking.mask_batch(
      ids[sub], maskable[sub], keys[sub], word_start=None if ws is None else ws[sub], **kw
    )
    for x, y in zip(full, part):
      np.testing.assert_array_equal(x[sub], y)
  other = masking.mask_batch(ids, maskable, keyed_random.row_keys(8, np.arange(100, 116)), **kw)
  assert not np.array_equal(full[1], other[1])


def test_bad_arguments():
  ids = np.full([1, 8], 7, np.int32)
  with pytest.raises(PretrainError, match="random replacement"):
    masking.mask_batch(
      ids, ids > 0, np.zeros([1], np.uint64), masked_lm_prob=0.15, max_predictions=2, vocab_size=5
    )
  with pytest.raises(PretrainError, match="max_predictions"):
    mask_tokens(
      ids[0],
      ids[0] > 0,
      np.random.default_rng(0),
      masked_lm_prob=0.15,
      max_predictions=0,
      vocab_size=VOCAB,
    )
