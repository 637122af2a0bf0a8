"""Goodput bookkeeping (pretrain/training/progress.py)."""

import time

from pretrain.training.compile_cache import CacheWatch
from pretrain.training.progress import Progress


def test_progress_books_time_and_round_trips_through_a_checkpoint_dict(monkeypatch):
  clock = iter([10.0, 13.0, 13.0, 13.0, 15.0]).__next__
  monkeypatch.setattr(time, "perf_counter", clock)
  p = Progress(first_start_time=100.0)
  p.new_interval()  # t=10
  p.step(0.5)
  p.step(0.5)
  assert p.close_interval() == (3.0, 2, 1.0)  # t=13
  p.new_interval()  # t=13
  with p.timed("checkpoint"):  # 13 -> 15
    pass
  assert p.interval_start == 15.0
  saved = p.to_dict()
  assert saved == {
    "first_start_time": 100.0,
    "restarts": 0,
    "useful_seconds": 2.0,
    "compile_seconds": 0.0,
    "checkpoint_seconds": 2.0,
    "data_wait_seconds": 1.0,
    "eval_seconds": 0.0,
    "compile_cache_hits": 0,
    "compile_seconds_saved": 0.0,
  }
  again = Progress.resumed(dict(saved, unknown=1), first_start_time=200.0)
  assert again.to_dict() == dict(saved, restarts=1)  # The first life's start time is kept.
  assert Progress.resumed({"restarts": 2}, 200.0).to_dict()["first_start_time"] == 200.0
  monkeypatch.setattr(time, "time", lambda: 104.0)
  row = again.goodput_row()
  assert row == {
    "goodput": 0.5,
    "restarts": 1,
    "wall_seconds": 4.0,
    "badput_compile_seconds": 0.0,
    "badput_checkpoint_seconds": 2.0,
    "badput_data_wait_seconds": 1.0,
    "badput_eval_seconds": 0.0,
    "compile_cache_hits": 0,
    "compile_seconds_saved": 0.0,
  }


def test_compile_seconds_saved_add_up_over_lives():
  p = Progress.resumed({"compile_cache_hits": 2, "compile_seconds_saved": 30.0}, 0.0)
  p.compile_cache = CacheWatch("/cache", hits=1, saved_seconds=12.5)  # This life's hits so far.
  assert p.to_dict()["compile_cache_hits"] == 3
  row = p.goodput_row()
  assert (row["compile_cache_hits"], row["compile_seconds_saved"]) == (3, 42.5)
  assert Progress.resumed(p.to_dict(), 0.0).compile_seconds_saved == 42.5
