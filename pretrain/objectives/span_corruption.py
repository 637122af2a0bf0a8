"""T5's span corruption (Raffel et al. 2020, section 3.1.4), vectorized over a batch.

A raw chunk of `tokens_length` tokens gets a noise mask of
`round(tokens_length * noise_density)` tokens in `round(noise / mean_noise_span_length)`
spans. Noise and non-noise lengths are each split at random into that many
positive parts and interleaved, non-noise first, so the chunk always ends in a
noise span. Then, with sentinels s0, s1, ... (one per span, in order):

  tokens   a b c d e f g h         (noise: c d, g h)
  inputs   a b s0 e f s1 EOS       every noise span -> its sentinel
  targets  s0 c d s1 g h EOS       every non-noise span -> the sentinel of the noise span after it

Sentinel k is `first_sentinel - k` (T5 counts its extra ids down from the top
of the vocabulary). `random_spans_helper` picks `tokens_length` so that inputs
come out at exactly the requested length and targets at a length it returns:
every example has the same static shapes and nothing is ever truncated.

Randomness comes from counter-based keys (pretrain/objectives/keyed_random.py),
one per example, so an example's mask depends only on its key.
"""

import dataclasses

import numpy as np

from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random


@dataclasses.dataclass(frozen=True)
class SpanLengths:
  """The static lengths of one span-corruption setting."""

  tokens_length: int  # Raw tokens consumed per example.
  num_noise_tokens: int
  num_noise_spans: int
  inputs_length: int  # Non-noise tokens + a sentinel per span + EOS.
  targets_length: int  # Noise tokens + a sentinel per span + EOS.


def span_lengths(
  tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> SpanLengths:
  """Noise tokens, spans and the resulting lengths for a chunk of `tokens_length` tokens.

  The rounding is T5's random_spans_noise_mask: noise tokens clipped to
  [1, length - 1], at least one span.
  """
  if tokens_length < 2:
    raise PretrainError(f"span corruption needs chunks of >= 2 tokens, got {tokens_length}")
  if not 0.0 < noise_density < 1.0:
    raise PretrainError(f"noise_density={noise_density} must be in (0, 1)")
  if mean_noise_span_length < 1.0:
    raise PretrainError(f"mean_noise_span_length={mean_noise_span_length} must be >= 1")
  noise = min(max(int(round(tokens_length * noise_density)), 1), tokens_length - 1)
  spans = max(int(round(noise / mean_noise_span_length)), 1)
  nonnoise = tokens_length - noise
  return SpanLengths(
    tokens_length,
    noise,
    spans,
    inputs_length=nonnoise + spans + 1,
    targets_length=noise + spans + 1,
  )


def random_spans_helper(
  inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> SpanLengths:
  """The longest raw chunk whose corrupted inputs (with EOS) fit in `inputs_length`.

  T5's random_spans_helper: inputs 512 at density 0.15 and mean span 3 read
  568 raw tokens and give targets of 114. Inputs may come out one or two
  tokens short of `inputs_length` where no chunk length hits it exactly
  (the caller pads). At density 0.5 the chunk is one shorter when that
  brings targets down to the inputs' length, as T5 does.
  """
  if inputs_length < 3:
    raise PretrainError(f"inputs_length={inputs_length} must be >= 3 (a token, a sentinel and EOS)")
  tokens_length = inputs_length - 1
  while (
    span_lengths(tokens_length + 1, noise_density, mean_noise_span_length).inputs_length
    <= inputs_length
  ):
    tokens_length += 1
  out = span_lengths(tokens_length, noise_density, mean_noise_span_length)
  if noise_density == 0.5 and out.targets_length > out.inputs_length:
    # T5 then shortens targets by one without recomputing the chunk; recomputing keeps lengths exact.
    out = span_lengths(tokens_length - 1, noise_density, mean_noise_span_length)
  return out


def random_segmentation(
  keys: np.ndarray, num_items: int, num_segments: int, first_counter: int
) -> np.ndarray:
  """int64 [B, num_segments]: a uniformly random split of num_items into positive parts, per key.

  Picks num_segments - 1 of the num_items - 1 gaps between items as cuts (the
  smallest of one random word per gap). Uses counters first_counter ...
  first_counter + num_items - 2.
  """
  if not 1 <= num_segments <= num_items:
    raise PretrainError(f"cannot split {num_items} items into {num_segments} nonempty segments")
  b = len(keys)
  if num_segments == 1:
    return np.full([b, 1], num_items, np.int64)
  draws = keyed_random.bits(
    keys, np.arange(first_counter, first_counter + num_items - 1)
  )  # [B, items - 1]
  cuts = (
    np.sort(np.argpartition(draws, num_segments - 2, axis=1)[:, : num_segments - 1], axis=1) + 1
  )
  bounds = np.concatenate(
    [np.zeros([b, 1], np.int64), cuts, np.full([b, 1], num_items, np.int64)], axis=1
  )
  return np.diff(bounds, axis=1)


def random_spans_noise_mask(keys: np.ndarray, lengths: SpanLengths) -> np.ndarray:
  """bool [B, tokens_length]: True on noise; non-noise span first, noise span last."""
  n, spans = lengths.tokens_length, lengths.num_noise_spans
  noise = random_segmentation(keys, lengths.num_noise_tokens, spans, first_counter=0)  # [B, spans]
  nonnoise = random_segmentation(
    keys, n - lengths.num_noise_tokens, spans, first_counter=n
  )  # [B, spans]
  interleaved = np.stack([nonnoise, noise], axis=2).reshape(len(keys), 2 * spans)  # [B, 2 * spans]
  span_starts = np.cumsum(interleaved, axis=1)[:, :-1]  # [B, 2 * spans - 1], all < n
  starts = np.zeros([len(keys), n], np.int64)
  np.put_along_axis(starts, span_starts, 1, axis=1)
  return np.cumsum(starts, axis=1) % 2 == 1  # Odd-numbered spans are noise.


def _span_to_sentinel(tokens: np.ndarray, drop: np.ndarray, first_sentinel: int) -> np.ndarray:
  """Replaces each run of `drop` positions by one sentinel (k-th run -> first_sentinel - k).

  Every row keeps the same number of positions, so the result is a rectangular [B, kept].
  """
  prev = np.pad(drop[:, :-1], ((0, 0), (1, 0)))
  first = drop & ~prev  # [B, L]: the first position of each dropped run.
  sentinels = first_sentinel - (np.cumsum(first, axis=1) - 1)
  kept = np.where(drop, sentinels, tokens).astype(tokens.dtype)
  return kept[~drop | first].reshape(len(tokens), -1)


def span_corrupt(
  tokens: np.ndarray, keys: np.ndarray, lengths: SpanLengths, *, first_sentinel: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs [B, inputs_length], targets [B, targets_length], noise mask [B, tokens_length]).

  Args:
    tokens: int [B, tokens_length] raw chunks.
    keys: uint64 [B], one per example (keyed_random.row_keys).
    lengths: from random_spans_helper (or span_lengths) for this chunk length.
    first_sentinel: the id of sentinel 0; sentinel k is first_sentinel - k.
    eos_id: appended to inputs and targets.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] != lengths.tokens_length:
    raise PretrainError(
      f"span_corrupt: tokens of shape {tokens.shape}, expected [batch, {lengths.tokens_length}]"
    )
  noise = random_spans_noise_mask(keys, lengths)
  eos = np.full([len(tokens), 1], eos_id, tokens.dtype)
  inputs = np.concatenate([_span_to_sentinel(tokens, noise, first_sentinel), eos], axis=1)
  targets = np.concatenate([_span_to_sentinel(tokens, ~noise, first_sentinel), eos], axis=1)
  return inputs, targets, noise
