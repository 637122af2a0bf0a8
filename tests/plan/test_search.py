"""--search: only configurations that fit come back as fitting, fastest first, at the fewest microbatches."""

from plan_micro import micro_config

from pretrain.plan import isolate
from pretrain.plan import report
from pretrain.plan import search as search_lib
from pretrain.plan import targets


def _fake_planner(monkeypatch, compiled):
  """A constructed case instead of the compiler: activations of 8 GiB / microbatches (remat full: 2 GiB),
  fsdp shards 4 GiB of state over the devices; the step takes 100 ms, 4/3 with full remat, +10% per
  doubling of microbatches, +30% for fsdp's gathers."""

  def plan(config, target, *, hbm_limit_bytes=None):
    remat, accum = config.model.remat_policy, int(config.train.grad_accum_steps)
    mesh = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
    compiled.append((remat, accum, mesh["fsdp"]))
    state = 4 / mesh["fsdp"]
    peak = (state + (2 if remat == "full" else 8) / accum) * 2**30
    step = 0.1 * (4 / 3 if remat == "full" else 1) * 1.1 ** (accum.bit_length() - 1)
    step *= 1.3 if mesh["fsdp"] > 1 else 1
    return {
      "fits": peak <= hbm_limit_bytes,
      "memory": {"peak": peak},
      "mesh": mesh,
      "settings": {"remat_policy": remat, "grad_accum_steps": accum},
      "roofline": {"step_seconds": step, "tokens_per_sec": 1.0, "mfu": 0.5},
    }

  monkeypatch.setattr(search_lib.compile_lib, "aot_missing", lambda platform: None)
  return lambda config, target_name, hbm_limit_bytes: plan(
    config, targets.parse(target_name), hbm_limit_bytes=hbm_limit_bytes
  )


def test_search_returns_only_fitting_configs_fastest_first_on_a_constructed_case(monkeypatch):
  compiled = []
  fake = _fake_planner(monkeypatch, compiled)
  c = micro_config("bert")
  c.train.batch_size = 64
  meshes = [{"data": 4, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 1}]
  # 6 GiB per chip: data parallel holds 4 GiB of state, so no remat needs 4 microbatches (6 GiB) and
  # full remat fits at 1 (6 GiB); fsdp holds 1 GiB: no remat fits at 2 (5 GiB), full remat at 1 (3 GiB).
  got = search_lib.search(
    c,
    targets.parse("tpu:v5e-4"),
    meshes=meshes,
    remat_policies=("none", "full"),
    hbm_limit_bytes=6 * 2**30,
    plan_one=fake,
  )
  fitting = [
    (p["settings"]["remat_policy"], p["settings"]["grad_accum_steps"], p["mesh"]["fsdp"])
    for p in got
    if p["fits"]
  ]
  # Known best: data parallel without remat at 4 microbatches (0.1 x 1.1^2 = 0.121 s), then data + full
  # remat at 1 (0.133 s), fsdp + none at 2 (0.143 s) and fsdp + full at 1 (0.173 s).
  assert fitting == [("none", 4, 1), ("full", 1, 1), ("none", 2, 4), ("full", 1, 4)]
  assert all(p["memory"]["peak"] <= 6 * 2**30 for p in got if p["fits"])
  # Each pair stopped at its first fitting number of microbatches; the refused ones are reported after.
  assert sorted(compiled) == sorted(
    [
      ("none", 1, 1),
      ("none", 2, 1),
      ("none", 4, 1),
      ("full", 1, 1),
      ("none", 1, 4),
      ("none", 2, 4),
      ("full", 1, 4),
    ]
  )
  assert [p["fits"] for p in got] == [True] * 4 + [False] * 3
  assert report.overrides(got[0]) == (
    "--config.model.remat_policy=none --config.train.grad_accum_steps=4 "
    "--config.mesh.data=4 --config.mesh.fsdp=1 --config.mesh.tensor=1"
  )


def test_search_stops_at_its_compile_limit(monkeypatch):
  compiled = []
  fake = _fake_planner(monkeypatch, compiled)
  c = micro_config("bert")
  c.train.batch_size = 64
  got = search_lib.search(
    c, targets.parse("tpu:v5e-4"), limit=3, hbm_limit_bytes=6 * 2**30, plan_one=fake
  )
  assert len(compiled) == 3 and len(got) == 3


def test_a_real_search_goes_on_past_a_candidate_whose_compiler_crashes(
  monkeypatch, needs_gpu_compiler
):
  # The child compiling the remat=full candidate kills itself with SIGSEGV (as libtpu did on remat'd
  # steps); the two candidates compile side by side in their own child processes.
  monkeypatch.setenv(isolate.CRASH_FOR_TEST_ENV, "full")
  arrived = []
  got = search_lib.search(
    micro_config("gpt2"),
    targets.parse("gpu:h100x8"),
    meshes=[{"data": 8, "fsdp": 1, "tensor": 1}],
    remat_policies=("none", "full"),
    workers=2,
    on_result=arrived.append,
  )
  assert [(p["settings"]["remat_policy"], p["fits"]) for p in got] == [
    ("none", True),
    ("full", False),
  ]
  assert got[0]["roofline"]["step_seconds"] > 0
  # The crashed one is refused with its reason, and not retried with more microbatches.
  assert got[1]["exit"] == "SIGSEGV" and got[1]["settings"]["grad_accum_steps"] == 1
  assert sorted(p["settings"]["remat_policy"] for p in arrived) == ["full", "none"]
  assert "full --config.train.grad_accum_steps=1" in report.format_candidate(got[1])
  assert ": not fitting: compiler crashed (SIGSEGV) after " in report.format_candidate(got[1])
  text = report.format_search(got, "test")
  assert "1 fit" in text and "remat_policy=full" in text and "compiler crashed (SIGSEGV)" in text


def test_mesh_splits_cover_data_fsdp_and_tensor():
  assert search_lib.mesh_splits(8) == [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 1, "fsdp": 8, "tensor": 1},
    {"data": 4, "fsdp": 1, "tensor": 2},
    {"data": 1, "fsdp": 4, "tensor": 2},
    {"data": 2, "fsdp": 1, "tensor": 4},
    {"data": 1, "fsdp": 2, "tensor": 4},
    {"data": 1, "fsdp": 1, "tensor": 8},
  ]
