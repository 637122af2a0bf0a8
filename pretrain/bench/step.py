"""Throughput of the training step, next to HF torch of the same shape and a measured matmul peak.

  python -m pretrain.bench --config=configs/bert_tiny.py
  python -m pretrain.bench --config=configs/gpt2_tiny.py --dtypes=bfloat16 --reference=none
  python -m pretrain.bench --config=configs/t5_small.py --config.train.batch_size=4
  python -m pretrain.bench --config=configs/bert_tiny.py --data --json_out=bench.json
  python -m pretrain.bench --config=configs/gpt2_tiny.py --dtypes=float32 --breakdown --profile_ops=15

Every family of the registry (pretrain/families) is timed the same way, on a
batch of its own examples (batches.py); what the benchmark needs of a family
beyond its task is the family's `hf_reference.py` (reference.py lists it).
Times the project's real compiled train step (training/step.py: forward,
backward, clipping and the AdamW update, on the default data-parallel mesh) for
each compute dtype, at the config's batch, sequence length and prediction
count. Alongside it, in the same process:

* the peak of a jitted [M, K] x [K, N] matmul of the model's FFN shapes, per
  dtype (bfloat16 inputs accumulate in float32, as the model's matmuls do);
* with --reference=hf, the HF torch model of the identical shape (random init
  from a config object, `torch.optim.AdamW`, HF's standard loss path), in
  float32 and under bfloat16 autocast: BertForPreTraining, RobertaForMaskedLM,
  GPT2LMHeadModel, or T5ForConditionalGeneration with T5 v1.1's gated GELU and
  untied head;
* with --data (BERT only), examples/s of the input pipeline against HF's
  `DataCollatorForLanguageModeling`;
* with --jax_transpose, each dtype's step also traced with jax's own transpose
  of the contractions, next to the written-out backward the models use on CPU;
* with --breakdown, forward, forward+backward and the optimizer update timed
  alone; with --profile_ops=N, the N slowest XLA ops of forward+backward from a
  jax.profiler trace, each with the jax op (and so the model line) it came from,
  and the trace's time summed by kind of op (library matmuls, copies, loops).

Model FLOPs are the task's count (`task.train_flops_per_example`). For the MLM
families the project's head runs on the masked positions only, while HF's
projects every position onto the vocabulary (labels -100 elsewhere); HF's
TFLOP/s column counts that dense work. `notes` in the results lists each
difference of this kind between the two steps.
"""

import contextlib
import os
from typing import Any, Callable

from absl import flags
import jax
from ml_collections import config_flags

from pretrain import metrics as metrics_lib
from pretrain import sharding
from pretrain.bench import batches
from pretrain.bench import common
from pretrain.bench import pipeline
from pretrain.bench import profile
from pretrain.bench import reference as reference_lib
from pretrain.bench.matmul import matmul_case, matmul_shapes, torch_matmul_case
from pretrain.bench.reference import HF_DTYPES
from pretrain.bench.timing import Case, run_cases, throughput
from pretrain.models import precision
from pretrain.errors import PretrainError
from pretrain.training import step as step_lib
from pretrain.training.optimizer import make_optimizer


def describe_model(config) -> str:
  """One line: the model's family and shape, and the batch."""
  task = batches.bench_task(config)
  return batches.family_reference(task.name).describe(task, int(config.train.batch_size))


# --- the project's train step --------------------------------------------------


def project_case(
  config, dtype: str, *, steps: int = 5, warmup: int = 2, jax_transpose: bool = False
) -> Case:
  """The compiled train step with `dtype` compute, on a batch of the config's shape.

  jax_transpose: traced with jax's own transpose of every contraction instead of the written-out
  backward the models use on CPU (pretrain.models.precision), to time the two side by side.
  """
  task = batches.bench_task(config, dtype)
  batch_size = int(config.train.batch_size)
  mesh = sharding.make_mesh(config.mesh)
  model = task.build_model()
  tx, schedule = make_optimizer(config.optimizer, int(config.train.steps))
  fns = step_lib.build(task, model, tx, schedule, mesh, batch_size, seed=int(config.train.seed))
  state = fns.init_state(int(config.train.seed))
  with precision.jax_transpose() if jax_transpose else contextlib.nullcontext():
    step, compile_seconds = fns.compile_train_step()
  batch = sharding.make_global_batch(batches.task_batch(task, batch_size), mesh)

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))

  def report(timing):
    flops = task.train_flops_per_example() * batch_size
    peak = metrics_lib.peak_flops_per_device(config.metrics) * mesh.size
    row = throughput("project", dtype, timing, batch_size * task.tokens_per_example, flops, peak)
    row.update(
      backward="jax transpose"
      if jax_transpose
      else "written out"
      if precision.custom_backward()
      else "jax",
      compile_seconds=compile_seconds,
      num_params=fns.num_params,
      devices=mesh.size,
      flops_per_example=task.train_flops_per_example(),
    )
    return row

  return Case(
    f"project {dtype}" + (" (jax transpose)" if jax_transpose else ""),
    run,
    report,
    steps=steps,
    warmup=warmup,
    context=lambda: (task, model, tx, mesh, state.params, batch),
  )


# --- running it all ----------------------------------------------------------------


def run_benchmark(
  config,
  *,
  dtypes=("float32", "bfloat16"),
  reference: str = "auto",
  steps: int = 5,
  windows: int = 3,
  warmup: int = 2,
  matmul: bool = True,
  data: bool = False,
  breakdown_parts: bool = False,
  profile_ops: int = 0,
  jax_transpose: bool = False,
  reference_max_seconds: float = 180.0,
  reference_dtypes=HF_DTYPES,
  log: Callable[[str], None] = lambda s: None,
) -> dict:
  """Every measurement the flags ask for, as one JSON-able dict."""
  if reference not in ("auto", "hf", "none"):
    raise PretrainError(f"reference={reference!r}: expected 'auto', 'hf' or 'none'")
  if reference == "hf" and not reference_lib.hf_available():
    raise PretrainError("reference=hf needs torch and transformers: pip install -e '.[bench]'")
  use_hf = reference == "hf" or (reference == "auto" and reference_lib.hf_available())
  reference_lib.check_dtypes(reference_dtypes)
  device = jax.devices()[0]
  results: dict[str, Any] = {
    "model": describe_model(config),
    **common.environment(
      f"{jax.device_count()} x {device.device_kind} ({device.platform}), "
      f"{os.cpu_count()} CPU cores",
      hf=True,
    ),
    "windows": windows,
    "notes": reference_lib.reference_notes(config) if use_hf else [],
  }
  project, matmuls, hf = [], [], []
  for dtype in dtypes:
    log(f"compiling the project's train step, {dtype} ...")
    project.append(project_case(config, dtype, steps=steps, warmup=warmup))
    if jax_transpose:
      project.append(project_case(config, dtype, steps=steps, warmup=warmup, jax_transpose=True))
    if matmul:
      matmuls += [matmul_case(shape, dtype) for shape in matmul_shapes(config)]
  if use_hf:
    for hf_dtype in reference_dtypes:
      autocast = hf_dtype == "bf16-autocast"
      hf.append(
        reference_lib.hf_case(config, autocast, steps=steps, max_seconds=reference_max_seconds)
      )
      if matmul:
        matmuls += [torch_matmul_case(shape, autocast) for shape in matmul_shapes(config)]
  log(f"timing {len(project + hf + matmuls)} cases, {windows} windows each, round robin ...")
  rows = run_cases(project + hf + matmuls, windows)
  results["project"] = rows[: len(project)]
  results["hf"] = rows[len(project) : len(project) + len(hf)]
  results["matmul"] = rows[len(project) + len(hf) :]

  for r in results["project"]:
    same = [
      m["flops_per_sec"]
      for m in results["matmul"]
      if m["engine"] == "jax" and m["dtype"] == r["dtype"]
    ]
    if same:
      r["of_matmul_peak"] = r["tflops_per_sec"] * 1e12 / (max(same) * jax.device_count())
  results["ratios"] = {}
  hf_tokens = {r["dtype"]: r["tokens_per_sec"] for r in results["hf"]}
  plain = {r["dtype"]: r for r in results["project"] if r["backward"] != "jax transpose"}
  for r in results["project"]:
    if r["backward"] == "jax transpose":
      results["ratios"][f"project {r['dtype']} / the same with jax transpose"] = (
        plain[r["dtype"]]["tokens_per_sec"] / r["tokens_per_sec"]
      )
      continue
    for hf_dtype, tokens in hf_tokens.items():
      if r["dtype"] == "float32" and hf_dtype != "float32":
        continue  # float32 is compared with float32 only.
      results["ratios"][f"project {r['dtype']} / HF torch {hf_dtype}"] = (
        r["tokens_per_sec"] / tokens
      )

  def traced_as(r):  # The parts are traced again: with the backward the row's step was traced with.
    return (
      precision.jax_transpose() if r["backward"] == "jax transpose" else contextlib.nullcontext()
    )

  if breakdown_parts:
    for case, r in zip(project, results["project"]):
      log(f"timing the parts of the {case.label} step ...")
      with traced_as(r):
        r["breakdown_ms"] = profile.breakdown(case, steps=steps, windows=windows)
  if profile_ops:
    for case, r in zip(project, results["project"]):
      log(f"profiling the {case.label} forward+backward ...")
      with traced_as(r):
        r["op_profile"] = profile.op_profile(case, top=profile_ops)
  if data:
    log("input pipeline ...")
    results["data"] = pipeline.bert_pipeline(config, reference_collator=use_hf)
  return results


def format_table(results: dict) -> str:
  """The results as a readable plain-text table."""
  lines = [results["model"], common.environment_line(results), ""]
  header = (
    f"{'':26}{'tokens/s':>10}{'step ms':>9}{'windows min-max':>17}{'TFLOP/s':>9}{'MFU':>7}"
    f"{'of matmul peak':>16}"
  )
  lines += [header, "-" * len(header)]
  for r in results["project"] + results["hf"]:
    name = f"{'project' if r['name'] == 'project' else 'HF torch'} {r['dtype']}"
    name += " jax-T" if r.get("backward") == "jax transpose" else ""
    of_peak = f"{r['of_matmul_peak']:.1%}" if "of_matmul_peak" in r else "-"
    spread = f"{min(r['window_step_seconds']) * 1e3:.0f}-{max(r['window_step_seconds']) * 1e3:.0f}"
    lines.append(
      f"{name:26}{r['tokens_per_sec']:>10,.0f}{r['step_seconds'] * 1e3:>9.1f}{spread:>17}"
      f"{r['tflops_per_sec']:>9.4f}{r['mfu']:>7.1%}{of_peak:>16}"
    )
  if results["project"]:
    peak = results["project"][0]["peak_flops"]
    hf_model = f"; HF torch is {results['hf'][0]['model']}" if results["hf"] else ""
    lines.append(f"(MFU against {peak / 1e9:,.0f} GFLOP/s{hf_model})")
  lines += [f"note: {n}" for n in results.get("notes", [])]
  if results["matmul"]:
    lines.append("")
    groups: dict[str, list[dict]] = {}
    for m in results["matmul"]:
      groups.setdefault(f"{m['engine']} {m['dtype']}", []).append(m)
    for name, ms in groups.items():
      shapes = ", ".join(f"{m['shape']} {m['flops_per_sec'] / 1e9:,.0f}" for m in ms)
      lines.append(f"matmul {name:22} GFLOP/s: {shapes}")
  if results["ratios"]:
    lines.append("")
    for k, v in results["ratios"].items():
      lines.append(f"{k:40} {v:6.2f}x")
  for r in results["project"]:
    if "breakdown_ms" in r:
      lines.append("")
      lines.append(
        f"project {r['dtype']}{' jax-T' if r['backward'] == 'jax transpose' else ''} breakdown"
        " (ms, each part jitted alone): "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown_ms"].items())
        + f"; full step {r['step_seconds'] * 1e3:.1f}"
      )
  for r in results["project"]:
    if "op_profile" in r:
      ops = r["op_profile"]
      lines += [
        "",
        f"project {r['dtype']} forward+backward under the profiler: {ops['wall_ms']:.1f} ms per step,"
        f" {ops['op_ms']:.1f} ms in XLA ops; by kind (ms per step, share of the step, ops):",
      ]
      lines += [
        f"  {k['ms']:8.1f} {k['share']:6.1%}  {k['kind']:32} {k['ops']}" for k in ops["kinds"]
      ]
      lines += ["", f"project {r['dtype']} slowest XLA ops (ms per step, share of the step):"]
      lines += [f"  {o['ms']:8.1f} {o['share']:6.1%}  {o['op']:32} {o['from']}" for o in ops["top"]]
  if "data" in results:
    d = results["data"]
    lines += [
      "",
      f"input pipeline (batch {d['batch_size']}, examples/s): "
      f"BertExamples.batch 1 thread {d['bert_examples_per_sec']:,.0f}; "
      f"BatchStream {d['batch_stream_threads']} threads {d['batch_stream_per_sec']:,.0f}"
      + (
        f"; HF DataCollatorForLanguageModeling {d['hf_collator_per_sec']:,.0f}"
        if "hf_collator_per_sec" in d
        else ""
      ),
    ]
  return "\n".join(lines)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file(
    "config", "configs/bert_tiny.py", "Config file.", lock_config=True
  )
  flags.DEFINE_integer("steps", 5, "Timed steps per window.")
  flags.DEFINE_integer("windows", 3, "Timing windows; the median window is reported.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the project's step.")
  flags.DEFINE_enum(
    "reference",
    "auto",
    ["auto", "hf", "none"],
    "HF torch reference; auto = when torch and transformers import.",
  )
  flags.DEFINE_float(
    "reference_max_seconds", 180.0, "Stop timing a reference after this long (at least one window)."
  )
  flags.DEFINE_list("reference_dtypes", list(HF_DTYPES), "HF torch modes to time.")
  flags.DEFINE_bool("matmul", True, "Measure the matmul peak of each dtype.")
  flags.DEFINE_bool(
    "data",
    False,
    "Benchmark the input pipeline too (over the token store; a small corpus is prepared first).",
  )
  flags.DEFINE_bool("breakdown", False, "Time forward, backward and the optimizer update alone.")
  flags.DEFINE_bool(
    "jax_transpose",
    False,
    "Also time each dtype's step traced with jax's own transpose of the contractions (on CPU the "
    "models write the backward out: pretrain/models/precision.py).",
  )
  flags.DEFINE_integer(
    "profile_ops",
    0,
    "List the N slowest XLA ops of forward+backward and the time by kind of op (jax.profiler).",
  )
  flags.DEFINE_string("json_out", "", "Also write the results here as JSON.")


def _measure() -> dict:
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  return run_benchmark(
    FLAGS.config,
    dtypes=tuple(FLAGS.dtypes),
    reference=FLAGS.reference,
    steps=FLAGS.steps,
    windows=FLAGS.windows,
    warmup=FLAGS.warmup,
    matmul=FLAGS.matmul,
    data=FLAGS.data,
    breakdown_parts=FLAGS.breakdown,
    profile_ops=FLAGS.profile_ops,
    jax_transpose=FLAGS.jax_transpose,
    reference_max_seconds=FLAGS.reference_max_seconds,
    reference_dtypes=tuple(FLAGS.reference_dtypes),
    log=common.log,
  )


def main(argv):
  del argv
  common.run_main(_measure, format_table, flags.FLAGS.json_out)
