"""A run in phases is planned phase by phase: each phase's own step, and the run fits only if all do."""

import json

import pytest
from two_phase_micro import get_config

from pretrain.plan import compile as compile_lib
from pretrain.plan import phased
from pretrain.plan import targets


def _in_process(config, target_name, hbm_limit_bytes):
  return compile_lib.plan(config, targets.parse(target_name), hbm_limit_bytes=hbm_limit_bytes)


def test_every_phase_is_compiled_with_its_own_sequence_length(needs_tpu_compiler):
  p = phased.plan(get_config(), "tpu:v5e-4", plan_one=_in_process)
  first, second = p["phases"]
  assert first["phase"] == {"name": "seq16", "start_step": 0, "end_step": 5}
  assert second["phase"] == {"name": "seq32", "start_step": 5, "end_step": 10}
  assert (first["tokens_per_step"], second["tokens_per_step"]) == (8 * 16, 8 * 32)
  assert first["fits"] and second["fits"] and p["fits"]
  # The batch is each phase's: twice the tokens per sequence is twice the batch's bytes.
  assert second["memory"]["batch"] > first["memory"]["batch"]
  assert first["memory"]["params"] == second["memory"]["params"]  # One model across phases.
  assert p["memory"]["peak"] == max(first["memory"]["peak"], second["memory"]["peak"])
  # Five steps each: the run's step time is the two phases' mean.
  steps = [q["roofline"]["step_seconds"] for q in (first, second)]
  assert p["roofline"]["step_seconds"] == pytest.approx(sum(steps) / 2)
  assert p["roofline"]["run_seconds"] == pytest.approx(5 * sum(steps))
  json.dumps(p)  # --json_out writes it as it is.


def _constructed(name, start, end, **plan):
  return dict(plan, phase={"name": name, "start_step": start, "end_step": end}, memory={})


def test_a_run_fits_only_if_every_phase_does_and_says_which_did_not():
  refused = (
    _constructed("seq128", 0, 90, fits=True),
    _constructed("seq512", 90, 100, fits=False, refusal="RESOURCE_EXHAUSTED: 99G exceeds 95G"),
  )
  s = phased.summary(list(refused))
  assert not s["fits"] and s["refusal"] == "phase seq512: RESOURCE_EXHAUSTED: 99G exceeds 95G"
  assert "crash" not in s and "roofline" not in s
  crashed = _constructed("seq128", 0, 90, fits=False, crash="compiler crashed (SIGSEGV) after 9 s")
  s = phased.summary([crashed, refused[1]])
  assert s["crash"] == "phase seq128: compiler crashed (SIGSEGV) after 9 s"
  assert s["refusal"].startswith("phase seq512:")
