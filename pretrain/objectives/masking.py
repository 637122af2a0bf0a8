"""Masked-LM masking as BERT's create_masked_lm_predictions, per example or per batch.

The budget is min(max_predictions, max(1, round(n_maskable * masked_lm_prob))).
Candidates are the maskable positions, or whole words: a word is a maskable
position that starts a word (word_start, or the previous position is not
maskable) plus the maskable non-word-start positions after it. Candidates are
taken in random order, skipping any word that would overshoot the budget (as
BERT does). Each chosen position becomes [MASK] (80%), a random non-special id
(10%, uniform over `random_ids`; by default the ids from NUM_SPECIAL on, the
project tokenizer's layout) or stays (10%).

`mask_batch` is vectorized and keyed: row b depends only on keys[b], so a
keyed example is the same in any batch. (tests/objectives/test_masking.py
holds a per-row reference drawn from a numpy Generator, with the same
statistics, that it checks mask_batch against.) `MlmExamples` is what the
masked-LM example builders share around it.
"""

import numpy as np

from pretrain.data.special_tokens import MASK_ID, NUM_SPECIAL  # Ids below NUM_SPECIAL are specials.
from pretrain.data.special_tokens import project_special_tokens, SpecialTokens
from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random

_MASK_PROB, _KEEP_PROB = 0.8, 0.1  # The rest (10%) gets a random id.
_COL_BITS = np.uint64(16)  # Priorities carry the column in their low bits: no ties.
_NONE = np.uint64(2**64 - 1)  # Priority of non-candidates: after every candidate.
_MASK_STREAM = (
  1  # MlmExamples' masks use keys of their own stream (the examples' other draws use stream 0).
)


def num_to_predict(n_maskable: np.ndarray | int, masked_lm_prob: float, max_predictions: int):
  """BERT's budget (rounding half to even, as Python's round); 0 when nothing is maskable."""
  n = np.asarray(n_maskable, np.int64)
  k = np.minimum(max_predictions, np.maximum(1, np.rint(n * masked_lm_prob).astype(np.int64)))
  return np.where(n > 0, k, 0)


def _random_ids(random_ids: np.ndarray | None, vocab_size: int) -> np.ndarray:
  if random_ids is None:
    random_ids = np.arange(NUM_SPECIAL, vocab_size)
  if not len(random_ids):
    raise PretrainError(
      f"vocab_size={vocab_size} leaves no ids for a random replacement of a masked token"
    )
  return np.asarray(random_ids, np.int64)


def _check(max_predictions: int, length: int):
  if max_predictions < 1:
    raise PretrainError(f"max_predictions={max_predictions} must be >= 1")
  if length >= 2 ** int(_COL_BITS):
    raise PretrainError(
      f"sequence length {length} is too long for masking (max {2 ** int(_COL_BITS) - 1})"
    )


def check_example_inputs(
  docs, vocab_size: int, seed, whole_word_masking: bool, word_start: np.ndarray | None
) -> np.ndarray | None:
  """Checks what a masked-LM builder is given (docs: Documents); returns the word-start table or None."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise PretrainError(f"seed={seed!r} must be a non-negative integer")
  if docs.num_tokens and docs.max_token_id >= vocab_size:
    raise PretrainError(f"the corpus has token id {docs.max_token_id} >= vocab_size={vocab_size}")
  if not whole_word_masking:
    return None
  if word_start is None or np.shape(word_start) != (vocab_size,):
    raise PretrainError(
      f"whole-word masking needs word_start of shape [{vocab_size}], "
      f"got {None if word_start is None else np.shape(word_start)}"
    )
  return np.asarray(word_start, bool)


def check_config(cfg) -> None:
  """Checks an MLM example config's masking fields (masked_lm_prob, max_predictions_per_seq, max_seq_length)."""
  if not 0.0 < cfg.masked_lm_prob <= 1.0:
    raise PretrainError(f"masked_lm_prob={cfg.masked_lm_prob} must be in (0, 1]")
  if not 1 <= cfg.max_predictions_per_seq <= cfg.max_seq_length:
    raise PretrainError(
      f"max_predictions_per_seq={cfg.max_predictions_per_seq} must be in [1, max_seq_length]"
    )


class MlmExamples:
  """What the masked-LM example builders (BERT's, RoBERTa's) share: their checked inputs, `self[i]`, and
  `_mask`, which masks a batch. A subclass builds the unmasked batch in `batch(indices)`."""

  def __init__(
    self,
    family: str,
    docs,
    cfg,
    vocab_size: int,
    seed: int,
    word_start: np.ndarray | None,
    special: SpecialTokens | None,
  ):
    self._ws = check_example_inputs(docs, vocab_size, seed, cfg.whole_word_masking, word_start)
    self.special = special or project_special_tokens(vocab_size)
    self.special.require(family, "pad", "cls", "sep", "mask")
    self.cfg = cfg
    self.vocab_size = int(vocab_size)
    self.seed = int(seed)
    self._docs = docs
    doc_tokens = np.diff(docs.sentence_starts[docs.doc_starts])
    self._nonempty_docs = np.flatnonzero(doc_tokens > 0)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.batch(np.asarray([index], np.int64)).items()}

  def _mask(
    self, ids: np.ndarray, text: np.ndarray, idx: np.ndarray
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(input_ids, the masked_lm_* fields) of a batch of ids [B, L] for the examples `idx`.

    Targets are the non-special ids of `text` (so not the separators inside it); the masks are keyed
    by (seed, index) on a stream of their own.
    """
    maskable = text & ~self.special.is_special[ids]
    word_start = self._ws[ids] if self._ws is not None else None
    input_ids, positions, labels, weights = mask_batch(
      ids,
      maskable,
      keyed_random.row_keys(self.seed, idx, stream=_MASK_STREAM),
      masked_lm_prob=self.cfg.masked_lm_prob,
      max_predictions=self.cfg.max_predictions_per_seq,
      vocab_size=self.vocab_size,
      word_start=word_start,
      mask_id=self.special.mask,
      random_ids=self.special.random_ids,
    )
    return input_ids, {
      "masked_lm_positions": positions,
      "masked_lm_ids": labels,
      "masked_lm_weights": weights,
    }


def _word_starts(maskable: np.ndarray, word_start: np.ndarray) -> np.ndarray:
  """bool [..., L]: maskable positions that begin a whole-word candidate."""
  prev = np.zeros_like(maskable)
  prev[..., 1:] = maskable[..., :-1]
  return maskable & (word_start | ~prev)


def mask_batch(
  ids: np.ndarray,
  maskable: np.ndarray,
  keys: np.ndarray,
  *,
  masked_lm_prob: float,
  max_predictions: int,
  vocab_size: int,
  word_start: np.ndarray | None = None,
  mask_id: int = MASK_ID,
  random_ids: np.ndarray | None = None,
):
  """Masks a batch, vectorized, with keyed draws.

  Args:
    ids: int [B, L].
    maskable: bool [B, L].
    keys: uint64 [B]; row b's masks depend only on keys[b] (and its inputs).
    masked_lm_prob: fraction of maskable tokens to predict.
    max_predictions: P, the cap and the output length.
    vocab_size: the vocabulary size.
    mask_id: the [MASK] id.
    random_ids: the non-special ids, which random replacements are drawn from
      uniformly (default: NUM_SPECIAL .. vocab_size - 1).
    word_start: bool [B, L] or None (whole-word masking when given).

  Returns:
    (input_ids int32 [B, L], positions int32 [B, P], labels int32 [B, P],
    weights float32 [B, P]).
  """
  ids = np.asarray(ids)
  maskable = np.asarray(maskable, bool)
  b, length = ids.shape
  p = max_predictions
  _check(p, length)
  replacements = _random_ids(random_ids, vocab_size)
  col = np.arange(length, dtype=np.uint64)
  k = num_to_predict(maskable.sum(1), masked_lm_prob, p)  # [B]
  draws = keyed_random.bits(keys, col)  # [B, L]
  # Unique per row: random high bits, the column in the low bits.
  priority = ((draws >> _COL_BITS) << _COL_BITS) | col
  if word_start is None:
    priority = np.where(maskable, priority, _NONE)
    # The k-th smallest priority of each row is its threshold; k <= P.
    smallest = np.partition(priority, p - 1, axis=1)[:, :p] if p < length else priority.copy()
    smallest.sort(axis=1)
    threshold = smallest[np.arange(b), np.maximum(k - 1, 0)]
    chosen = maskable & (priority <= threshold[:, None]) & (k > 0)[:, None]
  else:
    chosen = _choose_words(maskable, np.asarray(word_start, bool), priority, k)
  rows, cols = np.nonzero(chosen)  # Row-major: columns ascending within a row.
  counts = np.bincount(rows, minlength=b)
  slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
  labels_flat = ids[rows, cols].astype(np.int32)
  # Second draw per position: top 32 bits pick 80/10/10, low 32 bits the random id.
  d2 = keyed_random.bits(keys[rows], (cols + length)[:, None])[:, 0]
  u = (d2 >> np.uint64(32)).astype(np.float64) * 2.0**-32
  lo = (d2 & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
  random = replacements[(lo * len(replacements)).astype(np.int64)]
  new = np.where(
    u < _MASK_PROB, mask_id, np.where(u < _MASK_PROB + _KEEP_PROB, labels_flat, random)
  )
  input_ids = ids.astype(np.int32)
  input_ids[rows, cols] = new
  positions = np.zeros([b, p], np.int32)
  labels = np.zeros([b, p], np.int32)
  weights = np.zeros([b, p], np.float32)
  positions[rows, slots] = cols
  labels[rows, slots] = labels_flat
  weights[rows, slots] = 1.0
  return input_ids, positions, labels, weights


def _choose_words(maskable, word_start, priority, k):
  """bool [B, L]: all positions of whole words taken in priority order within budget k [B]."""
  b, length = maskable.shape
  col = np.arange(length)
  starts = _word_starts(maskable, word_start)
  start_col = np.maximum.accumulate(np.where(starts, col, 0), axis=1)  # Each position's word start.
  flat = (np.arange(b)[:, None] * length + start_col)[maskable]
  word_len = np.bincount(flat, minlength=b * length).reshape(b, length)  # At word starts.
  order = np.argsort(np.where(starts, priority, _NONE), axis=1)
  lens = np.take_along_axis(word_len, order, axis=1)  # Words first, by priority; then zeros.
  n_words = starts.sum(1)
  take = np.zeros([b, length], bool)
  count = np.zeros([b], np.int64)
  for r in range(int(n_words.max(initial=0))):
    lr = lens[:, r]
    fits = (lr > 0) & (count + lr <= k)
    take[:, r] = fits
    count += np.where(fits, lr, 0)
    if r % 8 == 7 and not ((count < k) & (n_words > r + 1)).any():
      break
  taken_start = np.zeros([b, length], bool)
  np.put_along_axis(taken_start, order, take, axis=1)
  return maskable & np.take_along_axis(taken_start, start_col, axis=1)
