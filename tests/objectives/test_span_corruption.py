"""Span corruption: T5's lengths, noise statistics, exact shapes, reconstruction, sentinel order, determinism."""

import numpy as np
import pytest

from pretrain.errors import PretrainError
from pretrain.objectives import keyed_random
from pretrain.objectives import span_corruption as sc

FIRST_SENTINEL, EOS = 1099, 3  # Sentinels 1099, 1098, ...; text ids stay below 1000.


def corrupt(n_rows, lengths, seed=0, first_index=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, 1000, (n_rows, lengths.tokens_length)).astype(np.int32)
  keys = keyed_random.row_keys(seed, np.arange(first_index, first_index + n_rows))
  return tokens, sc.span_corrupt(tokens, keys, lengths, first_sentinel=FIRST_SENTINEL, eos_id=EOS)


def reconstruct(inputs, targets):
  """The original chunk from one example: each sentinel in inputs -> the span after it in targets."""
  spans, current = {}, None
  for t in targets[:-1]:
    if t > FIRST_SENTINEL - 100:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs[:-1]:
    out.extend(spans[int(t)] if t > FIRST_SENTINEL - 100 else [int(t)])
  return out


def test_helper_gives_t5_lengths():
  assert sc.random_spans_helper(512) == sc.SpanLengths(
    tokens_length=568,
    num_noise_tokens=85,
    num_noise_spans=28,
    inputs_length=512,
    targets_length=114,
  )
  assert sc.random_spans_helper(128) == sc.SpanLengths(141, 21, 7, 128, 29)
  # Density 0.5: targets come out no longer than inputs.
  half = sc.random_spans_helper(512, 0.5, 3.0)
  assert half.targets_length <= half.inputs_length <= 512


@pytest.mark.parametrize("inputs_length", [8, 31, 64, 100, 257, 512, 1024])
def test_helper_takes_the_longest_chunk_that_fits(inputs_length):
  lengths = sc.random_spans_helper(inputs_length)
  assert lengths.inputs_length <= inputs_length
  assert sc.span_lengths(lengths.tokens_length + 1, 0.15, 3.0).inputs_length > inputs_length


@pytest.mark.parametrize("inputs_length", [31, 128, 512])
def test_outputs_have_exactly_the_computed_lengths_and_reconstruct_the_chunk(inputs_length):
  lengths = sc.random_spans_helper(inputs_length)
  tokens, (inputs, targets, noise) = corrupt(64, lengths)
  assert inputs.shape == (64, lengths.inputs_length) and targets.shape == (
    64,
    lengths.targets_length,
  )
  assert inputs.dtype == targets.dtype == np.int32
  assert (inputs[:, -1] == EOS).all() and (targets[:, -1] == EOS).all()
  for b in range(64):
    assert reconstruct(inputs[b], targets[b]) == tokens[b].tolist()
    np.testing.assert_array_equal(tokens[b][noise[b]], targets[b][targets[b] < 1000][:-1])


def test_sentinels_are_in_order_and_pair_up():
  lengths = sc.random_spans_helper(128)
  _, (inputs, targets, noise) = corrupt(32, lengths)
  expected = FIRST_SENTINEL - np.arange(lengths.num_noise_spans)
  for b in range(32):
    np.testing.assert_array_equal(inputs[b][inputs[b] > 1000], expected)
    np.testing.assert_array_equal(targets[b][targets[b] > 1000], expected)
  assert (targets[:, 0] == FIRST_SENTINEL).all()  # Targets open with sentinel 0 ...
  assert (
    not noise[:, 0].any() and noise[:, -1].all()
  )  # ... as every chunk starts clean and ends in noise.


def test_noise_density_and_mean_span_length():
  lengths = sc.random_spans_helper(512)
  _, (_, _, noise) = corrupt(2000, lengths)
  np.testing.assert_array_equal(noise.sum(axis=1), 85)  # round(568 * 0.15)
  starts = noise & ~np.pad(noise[:, :-1], ((0, 0), (1, 0)))
  np.testing.assert_array_equal(starts.sum(axis=1), 28)  # round(85 / 3)
  span_lengths = np.diff(
    np.flatnonzero(np.diff(np.pad(noise, ((0, 0), (1, 1))).astype(np.int8).ravel()))
  )[::2]
  assert (
    span_lengths.min() >= 1 and abs(span_lengths.mean() - 3.0) < 0.1 and span_lengths.max() > 10
  )
  # Noise falls anywhere: the per-position rate across examples stays near the density.
  rate = noise.mean(axis=0)[20:-20]
  assert np.abs(rate - 0.15).max() < 0.05, rate


def test_random_segmentation_is_uniform_over_compositions():
  keys = keyed_random.row_keys(3, np.arange(8000))
  parts = sc.random_segmentation(keys, num_items=5, num_segments=2, first_counter=0)
  np.testing.assert_array_equal(parts.sum(axis=1), 5)
  freq = np.bincount(parts[:, 0], minlength=5)[1:] / len(keys)  # 4 compositions of 5 into 2 parts
  np.testing.assert_allclose(freq, 0.25, atol=0.02)
  np.testing.assert_array_equal(sc.random_segmentation(keys[:3], 7, 1, 0), [[7]] * 3)
  with pytest.raises(PretrainError, match="cannot split 3 items into 4"):
    sc.random_segmentation(keys, 3, 4, 0)


def test_deterministic_per_key():
  lengths = sc.random_spans_helper(64)
  _, a = corrupt(16, lengths, first_index=0)
  _, b = corrupt(16, lengths, first_index=0)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # Row 8 of a batch starting at 0 equals row 0 of a batch starting at 8 (same key, same tokens).
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, 1000, (1, lengths.tokens_length)).astype(np.int32)
  batch = np.repeat(tokens, 16, axis=0)
  keys = keyed_random.row_keys(0, np.arange(16))
  full = sc.span_corrupt(batch, keys, lengths, first_sentinel=FIRST_SENTINEL, eos_id=EOS)
  one = sc.span_corrupt(tokens, keys[8:9], lengths, first_sentinel=FIRST_SENTINEL, eos_id=EOS)
  for x, y in zip(full, one):
    np.testing.assert_array_equal(x[8:9], y)
  assert len({m.tobytes() for m in full[2]}) == 16  # Different keys, different masks.


def test_bad_settings_are_refused():
  with pytest.raises(PretrainError, match="noise_density"):
    sc.random_spans_helper(128, noise_density=1.5)
  with pytest.raises(PretrainError, match="mean_noise_span_length"):
    sc.random_spans_helper(128, mean_noise_span_length=0.5)
  with pytest.raises(PretrainError, match="inputs_length"):
    sc.random_spans_helper(2)
  lengths = sc.random_spans_helper(64)
  with pytest.raises(PretrainError, match="expected \\[batch, 70\\]"):
    sc.span_corrupt(
      np.zeros([2, 69], np.int32),
      keyed_random.row_keys(0, np.arange(2)),
      lengths,
      first_sentinel=FIRST_SENTINEL,
      eos_id=EOS,
    )
