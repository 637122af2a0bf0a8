"""pretrain.bench.data's figures on a tiny corpus: every one produced, positive and finite (no timing assertions)."""

import json
import math
import os

from pretrain.bench import data as bench_data

_SMALL_MODEL = {
  "model.hidden_size": 64,
  "model.num_layers": 1,
  "model.num_heads": 2,
  "model.intermediate_size": 128,
  "train.batch_size": 16,
}
_LARGEST_DOC = (
  64 << 10
)  # A corpus stops after the document that reaches its size; the largest has 54 KB.
_MB = bench_data.MB


def _positive(d: dict, keys: str, where: str):
  for k in keys.split():
    assert isinstance(d[k], (int, float)) and math.isfinite(d[k]) and d[k] > 0, (where, k, d[k])


def test_corpus_has_the_size_asked_and_is_reused(tmp_path):
  folder = str(tmp_path / "c")
  meta = bench_data.write_corpus(folder, 0.2, file_bytes=64 << 10)
  target = int(0.2 * _MB)
  assert len(meta["files"]) >= 3 and sum(os.path.getsize(p) for p in meta["files"]) == meta["bytes"]
  assert target <= meta["bytes"] < target + _LARGEST_DOC
  assert all(os.path.getsize(p) <= 64 << 10 for p in meta["files"][:-1])  # One input unit per file.
  text = open(meta["files"][0], encoding="utf-8").read()
  assert "\n\n" in text and not text.startswith("\n")
  mtimes = [os.path.getmtime(p) for p in meta["files"]]
  assert bench_data.write_corpus(folder, 0.2, file_bytes=64 << 10) == meta
  assert [os.path.getmtime(p) for p in meta["files"]] == mtimes
  assert bench_data.write_corpus(folder, 0.3, file_bytes=64 << 10)["bytes"] >= 0.3 * _MB


def test_every_figure_of_a_tiny_run(tmp_path):
  results = bench_data.run(
    [0.2],
    str(tmp_path),
    vocab_size=300,
    steps=1,
    stream_sizes_mb=[0.2],
    stream_batches=2,
    train_overrides=_SMALL_MODEL,
  )
  (row,) = results["sizes"]
  target = int(0.2 * _MB)
  assert row["files"] == 1 and target <= row["text_bytes"] < target + _LARGEST_DOC
  rates = "seconds mb_per_s mb_per_s_per_core "
  _positive(row["prepare"], rates + "units workers train_tokens store_mb", "prepare")
  _positive(row["datasets"], rates + "load_seconds map_seconds rows tokens cache_mb", "datasets")
  _positive(row, "prepare_over_datasets", "ratio")
  train = row["train"]
  _positive(
    train,
    "first_batch_s data_startup_s imports_s first_step_done_s compile_s peak_rss_mib "
    "peak_rss_first_batch_mib rss_anon_mib rss_file_mib",
    "train",
  )
  assert train["first_step_done_s"] > train["first_batch_s"]
  assert train["peak_rss_first_batch_mib"] <= train["peak_rss_mib"]
  assert (
    train["peak_rss_increase"] == train["peak_rss_first_batch_increase"] == 0.0
  )  # The smallest size.
  _positive(
    row["in_memory"], "seconds peak_rss_mib base_rss_mib end_rss_mib train_tokens", "old path"
  )
  assert (
    row["in_memory"]["train_tokens"] == row["prepare"]["train_tokens"]
  )  # Same documents, same tokenizer.
  assert [s["seq"] for s in row["streams"]] == [128, 512]
  for s in row["streams"]:
    _positive(s, "store in_memory", f"stream {s['seq']}")
  assert {(c["chip"], c["seq"]) for c in results["consumption"]} == {
    (chip, seq) for chip in ("TPU v5p", "H100") for seq in (128, 512)
  }
  for c in results["consumption"]:
    _positive(c, "peak_flops flops_per_example examples_per_s", c["chip"])
  assert all(isinstance(results["targets"][k], bool) for k in ("rss_met", "startup_met"))
  table = bench_data.format_tables(results)
  for heading in ("Preparation", "Training process", "BatchStream", "chips fed", "Targets"):
    assert heading in table
  json.dumps(results)
