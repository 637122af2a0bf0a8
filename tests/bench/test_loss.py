"""The head benchmark's rows are consistent: plain and chunked cases, the chunked one smaller."""

import json

import pytest

from pretrain.bench import loss
from pretrain.errors import PretrainError


def test_run_benchmark_rows_and_memory():
  results = loss.run_benchmark(
    vocab=2048, hidden=16, tokens=256, chunk_sizes=(32,), dtypes=("float32",), windows=1
  )
  plain, chunked = results["rows"]
  assert (plain["loss"], chunked["loss"]) == ("plain", "chunked 32")
  assert results["logits_mib"] == pytest.approx(256 * 2048 * 4 / 2**20)
  # The plain program holds the whole batch's logits; the chunked one a few chunks' (32 x 2048).
  assert plain["temp_mib"] >= results["logits_mib"] > chunked["temp_mib"]
  for r in (plain, chunked):
    assert r["tokens_per_sec"] == pytest.approx(256 / (r["step_ms"] / 1e3))
  assert "chunked 32" in loss.format_table(results)
  json.dumps(results)


def test_bad_sizes_are_refused():
  with pytest.raises(PretrainError, match="positive"):
    loss.run_benchmark(chunk_sizes=(0,))
