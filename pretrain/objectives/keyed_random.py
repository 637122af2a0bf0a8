"""Counter-based random numbers, vectorized over rows: row b's draws depend only on keys[b].

Draw c of a row is SplitMix64 output c of a stream seeded by the row's key, so an
example keyed by (seed, global index) is the same whichever batch, process or
thread builds it.
"""

import functools

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_TWO_POW_M53 = 2.0**-53


def mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finalizer: a bijection of uint64 with full avalanche."""
  x = np.asarray(x, np.uint64)
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def _stream_base(seed: int, stream: int) -> np.uint64:
  return mix64(np.asarray([seed % 2**64], np.uint64) ^ mix64(np.asarray([stream], np.uint64)))[0]


def row_keys(seed: int, indices: np.ndarray, stream: int = 0) -> np.ndarray:
  """uint64 [B]: one key per (seed, stream, index); distinct streams give unrelated keys."""
  idx = np.asarray(indices, np.int64).astype(np.uint64)
  return mix64(_stream_base(int(seed), int(stream)) + (idx + np.uint64(1)) * _GAMMA)


def bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
  """uint64 draws: counters [C] -> [B, C], or counters [B, C] (row b uses keys[b]) -> [B, C]."""
  keys = np.asarray(keys, np.uint64)
  counters = np.asarray(counters).astype(np.uint64)
  return mix64(keys[:, None] + (counters + np.uint64(1)) * _GAMMA)


def uniform(b: np.ndarray) -> np.ndarray:
  """float64 in [0, 1) from uint64 draws (their top 53 bits)."""
  return (b >> np.uint64(11)).astype(np.float64) * _TWO_POW_M53


def popcount(x: np.ndarray) -> np.ndarray:
  """Set bits of each uint64, as int64 (SWAR; np.bitwise_count needs numpy 2)."""
  x = np.asarray(x, np.uint64)
  x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
  x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
  x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
  return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def binomial_half(keys: np.ndarray, n: np.ndarray, first_counter: int) -> np.ndarray:
  """int64 [B]: Binomial(n[b], 1/2) as the set bits among n[b] random bits.

  Uses counters first_counter, first_counter + 1, ... (one per 64 trials).
  """
  keys = np.asarray(keys, np.uint64)
  left = np.asarray(n, np.int64).copy()
  out = np.zeros(left.shape, np.int64)
  word = 0
  while (left > 0).any():
    live = np.flatnonzero(left > 0)
    take = np.minimum(left[live], 64).astype(np.uint64)
    mask = _ALL_ONES >> (np.uint64(64) - take)  # take >= 1, so the shift is < 64.
    draw = bits(keys[live], np.full([1], first_counter + word))[:, 0]
    out[live] += popcount(draw & mask)
    left[live] -= 64
    word += 1
  return out
