"""The run's own step compiled for a TPU slice and a GPU host: every family, memory as the sharding implies
it, the collectives the mesh needs, and configs that cannot fit reported as not fitting."""

import os

import pytest
from plan_micro import FAMILIES, micro_config

from pretrain.plan import compile as compile_lib
from pretrain.plan import targets


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_compiles_for_a_tpu_slice_with_fsdp(family, needs_tpu_compiler):
  c = micro_config(family)
  c.mesh.update(data=1, fsdp=-1)
  p = compile_lib.plan(c, targets.parse("tpu:v5e-4"))
  assert p["fits"] and p["devices"] == 4 and p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  m = p["memory"]
  # FSDP over 4 devices: each holds a quarter of the f32 parameters (norms and biases, whose dims do
  # not split, stay whole: a few percent at these shapes).
  whole = p["num_params"] * 4
  assert whole / 4 <= m["params"] <= whole / 4 * 1.15, (m["params"], whole)
  assert m["optimizer"] >= m["params"]  # AdamW's two moments / Adafactor's factors, sharded alike.
  assert 0 < m["peak"] < m["hbm"] and m["temporary"] > 0
  # Parameters gathered for use, gradients reduced back to their shards.
  kinds = p["collectives"]
  assert "all-gather" in kinds and kinds["all-gather"]["link_bytes"] > 0, kinds
  assert {"reduce-scatter", "all-reduce"} & set(kinds), kinds
  assert p["compiler_flops_per_device"] > 0 and p["roofline"]["step_seconds"] > 0
  assert 0 < p["roofline"]["mfu"] < 1


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_compiles_for_a_gpu_host_data_parallel(family, needs_gpu_compiler):
  # gpt2's plan also holds the peak against 1 MiB: the GPU compiler never refuses a program, so the
  # plan compares the peak with the memory a device may use and reports it as not fitting.
  limit = 2**20 if family == "gpt2" else None
  p = compile_lib.plan(micro_config(family), targets.parse("gpu:h100x8"), hbm_limit_bytes=limit)
  assert p["devices"] == 8 and p["mesh"]["data"] == 8
  m = p["memory"]
  # Pure data parallelism: every GPU holds all the parameters; the gradients are all-reduced.
  assert m["params"] == p["num_params"] * 4
  assert m["peak"] >= m["params"]
  assert p["collectives"]["all-reduce"]["link_bytes"] > 0
  assert p["collectives"]["all-reduce"]["network_bytes"] == 0  # One host: NVLink only.
  if limit:
    assert not p["fits"] and m["peak"] > limit and "exceeds" in p["refusal"]
  else:
    assert p["fits"] and m["limit"] == pytest.approx(0.75 * 80e9)  # JAX preallocates 75%.


def test_a_model_too_large_for_the_tpu_hbm_is_refused_by_the_compiler(needs_tpu_compiler):
  # 1 layer, but a 262,144 x 4,096 embedding: 4.3 GB of f32 parameters, replicated (data parallel),
  # plus its gradient and two AdamW moments is 17 GB on every 16 GB v5e chip.
  c = micro_config("bert", hidden_size=4096, num_heads=32, num_layers=1, intermediate_size=128)
  c.tokenizer.vocab_size = 262_144
  p = compile_lib.plan(c, targets.parse("tpu:v5e-4"))
  assert not p["fits"]
  assert "hbm" in p["refusal"].lower() or "memory" in p["refusal"].lower(), p["refusal"]
  assert p["memory"]["params"] > 4e9 and p["memory"]["optimizer"] > 8e9


def test_a_multi_slice_plan_puts_the_data_axis_over_dcn(needs_tpu_compiler):
  # Two v5e-4 slices: data=2 spans them (the mesh puts the slices on 'data'), fsdp=4 stays in a slice.
  c = micro_config("bert")
  c.mesh.update(data=2, fsdp=4)
  p = compile_lib.plan(c, targets.parse("tpu:2xv5e-4"))
  assert p["fits"] and p["devices"] == 8 and p["slices"] == 2
  kinds = p["collectives"]
  assert kinds["all-gather"]["link_bytes"] > 0  # FSDP's gathers, inside a slice.
  assert kinds["all-reduce"]["network_bytes"] > 0  # The gradients' reduction over 'data', across.
  assert p["roofline"]["seconds"]["network"] > 0


def test_the_tpu_compiler_gets_larger_fiber_stacks_unless_told_otherwise(monkeypatch):
  # libtpu 0.0.42.1 overflowed its fibers' stacks compiling gpt2_large for v5p-128 (SIGSEGV);
  # the planner appends the flag to what the user passes, and leaves a user's own value alone.
  monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_enable_latency_hiding_scheduler=true")
  compile_lib.use_compile_only_platforms()
  assert os.environ["LIBTPU_INIT_ARGS"] == (
    "--xla_tpu_enable_latency_hiding_scheduler=true --fibers_default_thread_stack_size=67108864"
  )
  monkeypatch.setenv("LIBTPU_INIT_ARGS", "--fibers_default_thread_stack_size=1048576")
  compile_lib.use_compile_only_platforms()
  assert os.environ["LIBTPU_INIT_ARGS"] == "--fibers_default_thread_stack_size=1048576"
