"""Each compile in a child process: a compiler that dies of a signal ends one plan, reported with it."""

from plan_micro import micro_config

from pretrain.plan import isolate


def test_a_compiler_crash_in_the_child_comes_back_as_a_plan_without_a_fit(
  monkeypatch, needs_gpu_compiler
):
  # The child kills itself with SIGSEGV where libtpu's compiler crashes: after lowering, in compile.
  monkeypatch.setenv(isolate.CRASH_FOR_TEST_ENV, "*")
  c = micro_config("gpt2")
  p = isolate.plan(c, "gpu:h100x8")
  assert p["exit"] == "SIGSEGV"  # The child's exit code was -11: it died of the signal.
  assert p["crash"].startswith("compiler crashed (SIGSEGV) after ") and not p["fits"]
  # What was known before the compile comes back: the settings and the state's bytes per device.
  assert p["target"] == "gpu:h100x8" and p["settings"]["remat_policy"] == "none"
  assert p["memory"]["params"] == p["num_params"] * 4 and "peak" not in p["memory"]
