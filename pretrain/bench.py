"""Throughput of the training step, next to HF torch of the same shape and a measured matmul peak.

  python -m pretrain.bench --config=configs/bert_tiny.py
  python -m pretrain.bench --config=configs/gpt2_tiny.py --dtypes=bfloat16 --reference=none
  python -m pretrain.bench --config=configs/t5_small.py --config.train.batch_size=4
  python -m pretrain.bench --config=configs/bert_tiny.py --data --json_out=bench.json
  python -m pretrain.bench --config=configs/gpt2_tiny.py --dtypes=float32 --breakdown --profile_ops=15

Every family of the task registry (pretrain/families) is timed the same way. Times
the project's real compiled train step (training/step.py: forward,
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
* with --breakdown, forward, forward+backward and the optimizer update timed
  alone; with --profile_ops=N, the N slowest XLA ops of forward+backward from a
  jax.profiler trace, each with the jax op (and so the model line) it came from.

Model FLOPs are the task's count (`task.train_flops_per_example`). For the MLM
families the project's head runs on the masked positions only, while HF's
projects every position onto the vocabulary (labels -100 elsewhere); HF's
TFLOP/s column counts that dense work. `notes` in the results lists each
difference of this kind between the two steps.
"""
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from pretrain import cli
from pretrain import metrics as metrics_lib
from pretrain import sharding
from pretrain import families
from pretrain.data import special_tokens
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert_model
from pretrain.training import step as step_lib
from pretrain.training.optimizer import make_optimizer

# The project sentencepiece layout's special tokens: what timing batches and the HF stand-in use.
_SPECIAL_TOKENS = special_tokens.SPECIAL_TOKENS
_NUM_SPECIAL = special_tokens.NUM_SPECIAL
_CLS_ID, _SEP_ID = special_tokens.CLS_ID, special_tokens.SEP_ID


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per step of each timing window; the median window is the figure."""
  window_step_seconds: tuple[float, ...]
  steps_per_window: int

  @property
  def step_seconds(self) -> float:
    return statistics.median(self.window_step_seconds)


@dataclasses.dataclass
class Case:
  """One thing to time: `run(n)` does n steps and returns once they are done.

  `report(timing)` turns its timing into a result row. With `window_seconds`,
  the steps per window follow from the warmup's pace instead of `steps`;
  `max_seconds` caps the timed seconds of a slow case (one window at least).
  """
  label: str
  run: Callable[[int], None]
  report: Callable[[Timing], dict]
  steps: int = 5
  warmup: int = 2
  window_seconds: float | None = None
  max_seconds: float = float("inf")
  context: Callable[[], Any] | None = None  # What breakdown() needs of a project case.


def measure(cases: list[Case], windows: int = 3, pause: float = 0.25) -> list[Timing]:
  """Warms every case up, then times them window by window, round robin.

  Interleaving keeps ratios between cases honest when the machine's speed
  drifts (shared CPUs do); the pause lets the last case's spinning worker
  threads go idle before the next window starts.
  """
  if windows < 1:
    raise PretrainError(f"windows={windows} must be positive")
  steps, spent, seconds = [], [0.0] * len(cases), [[] for _ in cases]
  for case in cases:
    if case.steps < 1 or case.warmup < 1:
      raise PretrainError(f"{case.label}: steps={case.steps} and warmup={case.warmup} must be positive")
    t0 = time.perf_counter()
    case.run(case.warmup)
    pace = (time.perf_counter() - t0) / case.warmup  # An overestimate: the first step is the slowest.
    n = case.steps
    if case.window_seconds:
      n = int(min(max(case.window_seconds / pace, 1), 1000))
    if math.isfinite(case.max_seconds):
      n = int(max(1, min(n, case.max_seconds / windows / pace)))
    steps.append(n)
  for _ in range(windows):
    for i, case in enumerate(cases):
      if seconds[i] and spent[i] > case.max_seconds:
        continue
      time.sleep(pause)
      t0 = time.perf_counter()
      case.run(steps[i])
      elapsed = time.perf_counter() - t0
      spent[i] += elapsed
      seconds[i].append(elapsed / steps[i])
  return [Timing(tuple(s), n) for s, n in zip(seconds, steps)]


def run_cases(cases: list[Case], windows: int = 3) -> list[dict]:
  return [case.report(t) for case, t in zip(cases, measure(cases, windows))]


def synthetic_batch(batch: int, seq_len: int, predictions: int, vocab: int, seed: int = 0) -> dict:
  """A full-length batch of `dummy_batch`'s fields: every token real, distinct masked positions."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(_NUM_SPECIAL, vocab, [batch, seq_len], dtype=np.int32)
  ids[:, 0] = _CLS_ID
  ids[:, seq_len // 2] = _SEP_ID
  ids[:, -1] = _SEP_ID
  segment = (np.arange(seq_len) > seq_len // 2).astype(np.int32)
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq_len), predictions, replace=False)
                                for _ in range(batch)]), axis=1).astype(np.int32)
  return {
      "input_ids": ids,
      "input_mask": np.ones([batch, seq_len], np.int32),
      "segment_ids": np.broadcast_to(segment, [batch, seq_len]).copy(),
      "masked_lm_positions": positions,
      "masked_lm_ids": np.take_along_axis(ids, positions, axis=1),
      "masked_lm_weights": np.ones([batch, predictions], np.float32),
      "next_sentence_labels": rng.integers(0, 2, [batch], dtype=np.int32),
  }


def _tokenizer_vocab(config) -> int:
  """Pieces of the tokenizer the task expects (T5 adds its sentinels above them)."""
  if config.task.name != "t5" and int(config.model.vocab_size):
    return int(config.model.vocab_size)
  return int(config.tokenizer.vocab_size)


def _task(config, dtype: str | None = None):
  """The config's task (`config.task.name`), with `dtype` compute when given."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if dtype:
      config.model.dtype = dtype
  return families.get_task(config, special_tokens.StandInTokenizer(_tokenizer_vocab(config)))


def _mlm_batch(task, batch_size: int) -> dict:
  """BERT's fields (RoBERTa's are a subset): full-length sequences, distinct masked positions."""
  b = synthetic_batch(batch_size, task.seq_len, task.num_predictions, task.vocab_size)
  return {k: b[k] for k in task.dummy_batch(1)}


def _causal_batch(task, batch_size: int) -> dict:
  """One document per row: random tokens, targets the next token, every position weighted."""
  rng = np.random.default_rng(0)
  ids = rng.integers(_NUM_SPECIAL, task.vocab_size, [batch_size, task.seq_len + 1], dtype=np.int32)
  return {
      "input_ids": ids[:, :-1],
      "target_ids": ids[:, 1:],
      "loss_weights": np.ones([batch_size, task.seq_len], np.float32),
      "segment_ids": np.ones([batch_size, task.seq_len], np.int32),
      "positions": np.broadcast_to(np.arange(task.seq_len, dtype=np.int32), [batch_size, task.seq_len]).copy(),
  }


def _span_corruption_batch(task, batch_size: int) -> dict:
  """Full-length T5 inputs and targets (span corruption fills both); decoder inputs shifted right."""
  rng = np.random.default_rng(0)
  li, lt = task.inputs_length, task.targets_length
  targets = rng.integers(_NUM_SPECIAL, task.first_sentinel + 1, [batch_size, lt], dtype=np.int32)
  return {
      "encoder_input_tokens": rng.integers(_NUM_SPECIAL, task.first_sentinel + 1, [batch_size, li],
                                           dtype=np.int32),
      "encoder_input_mask": np.ones([batch_size, li], np.int32),
      "decoder_input_tokens": np.concatenate([np.zeros([batch_size, 1], np.int32), targets[:, :-1]], axis=1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones([batch_size, lt], np.float32),
  }


# task.name -> a batch of the task's fields with every position real.
_BATCHES = {"bert": _mlm_batch, "roberta": _mlm_batch, "gpt2": _causal_batch, "t5": _span_corruption_batch}


def task_batch(task, batch_size: int) -> dict:
  if task.name not in _BATCHES:
    raise PretrainError(f"the benchmark has no synthetic batch for task {task.name!r}: add one to _BATCHES")
  return _BATCHES[task.name](task, batch_size)


def describe_model(config) -> str:
  task = _task(config)
  m, batch = task.model_config, int(config.train.batch_size)
  if task.name == "t5":
    return (f"T5 v1.1 d_model {m.hidden_size} d_ff {m.intermediate_size} heads {m.num_heads}x{m.head_dim} "
            f"layers {m.num_layers}+{m.num_decoder_layers} vocab {m.vocab_size}, "
            f"batch {batch} x (inputs {task.inputs_length} + targets {task.targets_length})")
  shape = (f"L{m.num_layers} H{m.hidden_size} A{m.num_heads} I{m.intermediate_size} vocab {m.vocab_size}, "
           f"batch {batch} x seq {task.seq_len}")
  if task.name == "gpt2":
    return f"GPT-2 {shape}"
  return f"{'BERT' if task.name == 'bert' else 'RoBERTa'} {shape}, {task.num_predictions} predictions"


# --- the project's train step --------------------------------------------------


def project_case(config, dtype: str, *, steps: int = 5, warmup: int = 2) -> Case:
  """The compiled train step with `dtype` compute, on a batch of the config's shape."""
  task = _task(config, dtype)
  batch_size = int(config.train.batch_size)
  mesh = sharding.make_mesh(config.mesh)
  model = task.build_model()
  tx, schedule = make_optimizer(config.optimizer, int(config.train.steps))
  fns = step_lib.build(task, model, tx, schedule, mesh, batch_size, seed=int(config.train.seed))
  state = fns.init_state(int(config.train.seed))
  step, compile_seconds = fns.compile_train_step()
  batch = sharding.make_global_batch(task_batch(task, batch_size), mesh)

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))

  def report(timing):
    flops = task.train_flops_per_example() * batch_size
    peak = metrics_lib.peak_flops_per_device(config.metrics) * mesh.size
    row = _throughput("project", dtype, timing, batch_size * task.tokens_per_example, flops, peak)
    row.update(compile_seconds=compile_seconds, num_params=fns.num_params, devices=mesh.size,
               flops_per_example=task.train_flops_per_example())
    return row

  return Case(f"project {dtype}", run, report, steps=steps, warmup=warmup,
              context=lambda: (task, model, tx, mesh, state.params, batch))


def _throughput(name: str, dtype: str, timing: Timing, tokens: int, flops: float, peak: float) -> dict:
  seconds = timing.step_seconds
  return {
      "name": name,
      "dtype": dtype,
      "step_seconds": seconds,
      "window_step_seconds": list(timing.window_step_seconds),
      "steps_per_window": timing.steps_per_window,
      "tokens_per_sec": tokens / seconds,
      "tflops_per_sec": flops / seconds / 1e12,
      "peak_flops": peak,
      "mfu": flops / seconds / peak,
      "flops_per_step": flops,
  }


def breakdown(case: Case, *, steps: int = 5, windows: int = 3) -> dict:
  """Milliseconds of the step's parts, each jitted alone: where a project step's time goes."""
  import optax  # pylint: disable=g-import-not-at-top
  task, model, tx, mesh, params, batch = case.context()
  rng = jax.random.key(0)
  denominators = task.denominators(batch)

  def objective(p, b, deterministic):
    return task.loss(model, p, b, denominators, dropout_rng=rng, deterministic=deterministic)[0]

  def update(p, g, o):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  def part(label, fn, *args):
    def run(n):
      for _ in range(n):
        r = fn(*args)
      jax.block_until_ready(r)
    return Case(label, run, lambda t: t.step_seconds * 1e3, steps=steps, warmup=1)

  with sharding.mesh_context(mesh):
    grad = jax.jit(jax.grad(lambda p, b: objective(p, b, False)))
    cases = [
        part("forward, no dropout", jax.jit(lambda p, b: objective(p, b, True)), params, batch),
        part("forward", jax.jit(lambda p, b: objective(p, b, False)), params, batch),
        part("forward+backward", grad, params, batch),
        part("optimizer update", jax.jit(update), params, grad(params, batch), tx.init(params)),
    ]
    return dict(zip([c.label for c in cases], run_cases(cases, windows)))


_OP_NAME = re.compile(r'^\s*%?([\w.\-]+) = .*?op_name="([^"]*)"')


def top_ops(case: Case, *, top: int = 15, steps: int = 3) -> list[dict]:
  """The XLA ops of forward+backward that take the most time, from a jax.profiler trace.

  Each: the compiled HLO instruction, ms per step (summed over its runs), its share of the
  step's wall time, and the jax op it came from (e.g. `transpose(jvp(...))/h_0/ln_2/add_any`),
  so a slow fusion can be traced to the model code. On CPU, independent ops run concurrently:
  the shares can add up to more than 100%.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  task, model, _, mesh, params, batch = case.context()
  denominators = task.denominators(batch)
  rng = jax.random.key(0)
  objective = lambda p, b: task.loss(model, p, b, denominators, dropout_rng=rng, deterministic=False)[0]
  with sharding.mesh_context(mesh):
    grad = jax.jit(jax.grad(objective))
    compiled = grad.lower(params, batch).compile()
    origin = {m.group(1): m.group(2) for line in compiled.as_text().splitlines() if (m := _OP_NAME.match(line))}
    jax.block_until_ready(compiled(params, batch))
    with tempfile.TemporaryDirectory(prefix="pretrain-profile-") as d:
      start = time.perf_counter()
      with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
          jax.block_until_ready(compiled(params, batch))
      wall = (time.perf_counter() - start) / steps
      traces = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith("perfetto_trace.json.gz")]
      if not traces:
        raise PretrainError("jax.profiler wrote no perfetto trace")
      with gzip.open(traces[0], "rt", encoding="utf-8") as f:
        events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  seconds: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("name") in origin:  # XLA ops only, not runtime or Python frames.
      seconds[e["name"]] = seconds.get(e["name"], 0.0) + float(e.get("dur", 0)) * 1e-6 / steps
  ranked = sorted(seconds.items(), key=lambda kv: -kv[1])[:top]
  return [{"op": name, "ms": s * 1e3, "share": s / wall, "from": origin[name]} for name, s in ranked]


# --- the matmul peak -------------------------------------------------------------


def matmul_shapes(config) -> list[tuple[int, int, int]]:
  """The FFN's two matmuls at the config's tokens per step: [M, K] x [K, N]."""
  task = _task(config)
  m = task.model_config
  tokens = int(config.train.batch_size) * task.tokens_per_example
  if task.name == "t5":
    hidden, ffn = m.hidden_size, m.intermediate_size
  else:
    hidden, ffn = m.hidden_size, m.intermediate_size
  return [(tokens, hidden, ffn), (tokens, ffn, hidden)]


def matmul_case(shape: tuple[int, int, int], dtype: str) -> Case:
  """A jitted [M, K] x [K, N] matmul, `dtype` inputs, float32 accumulation (the model's matmuls)."""
  m, k, n = shape
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal([m, k], np.float32), dtype)
  b = jnp.asarray(rng.standard_normal([k, n], np.float32), dtype)
  matmul = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32))

  def run(count):
    for _ in range(count):
      r = matmul(a, b)
    r.block_until_ready()

  report = lambda t: {"engine": "jax", "dtype": dtype, "shape": f"{m}x{k}x{n}",
                      "flops_per_sec": 2 * m * k * n / t.step_seconds}
  return Case(f"jax matmul {dtype} {m}x{k}x{n}", run, report, warmup=2, window_seconds=0.5)


def torch_matmul_case(shape: tuple[int, int, int], autocast: bool) -> Case:
  """The same matmul as torch's Linear does it, in float32 or under bfloat16 autocast."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  m, k, n = shape
  x, w = torch.randn(m, k), torch.randn(n, k)

  def run(count):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      for _ in range(count):
        torch.nn.functional.linear(x, w)

  dtype = "bf16-autocast" if autocast else "float32"
  report = lambda t: {"engine": "torch", "dtype": dtype, "shape": f"{m}x{k}x{n}",
                      "flops_per_sec": 2 * m * k * n / t.step_seconds}
  return Case(f"torch matmul {dtype} {m}x{k}x{n}", run, report, warmup=1, window_seconds=0.5)


# --- the HF torch reference --------------------------------------------------------


HF_DTYPES = ("float32", "bf16-autocast")


def hf_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import transformers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _long(x: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(x).astype(np.int64))


def _mlm_labels(b: dict) -> np.ndarray:
  """int64 [batch, seq_len]: the masked tokens' ids at their positions, -100 (HF's ignore index) elsewhere."""
  labels = np.full(b["input_ids"].shape, -100, np.int64)
  np.put_along_axis(labels, b["masked_lm_positions"], b["masked_lm_ids"], axis=1)
  return labels


def _hf_bert(transformers, m, b: dict):
  hf_config = transformers.BertConfig(
      vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size, hidden_act="gelu",
      hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      initializer_range=m.initializer_range, layer_norm_eps=m.layer_norm_eps)
  inputs = {"input_ids": _long(b["input_ids"]), "token_type_ids": _long(b["segment_ids"]),
            "attention_mask": _long(b["input_mask"]), "labels": _long(_mlm_labels(b)),
            "next_sentence_label": _long(b["next_sentence_labels"])}
  return transformers.BertForPreTraining(hf_config), inputs


def _hf_roberta(transformers, m, b: dict):
  # HF counts positions from pad_token_id + 1 = 2, as the project's position_offset does.
  hf_config = transformers.RobertaConfig(
      vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size, hidden_act="gelu",
      hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=1,
      initializer_range=m.initializer_range, layer_norm_eps=m.layer_norm_eps, pad_token_id=1)
  inputs = {"input_ids": _long(b["input_ids"]), "attention_mask": _long(b["input_mask"]),
            "labels": _long(_mlm_labels(b))}
  return transformers.RobertaForMaskedLM(hf_config), inputs


def _hf_gpt2(transformers, m, b: dict):
  hf_config = transformers.GPT2Config(
      vocab_size=m.vocab_size, n_positions=m.max_position_embeddings, n_embd=m.hidden_size,
      n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.intermediate_size, activation_function="gelu_new",
      resid_pdrop=m.dropout_rate, embd_pdrop=m.dropout_rate, attn_pdrop=m.attention_dropout_rate,
      layer_norm_epsilon=m.layer_norm_eps, initializer_range=m.initializer_range,
      bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 is outside a smaller vocabulary; training never reads them.
  # HF shifts the labels itself: labels = inputs.
  inputs = {"input_ids": _long(b["input_ids"]), "labels": _long(b["input_ids"])}
  return transformers.GPT2LMHeadModel(hf_config), inputs


def _hf_t5(transformers, m, b: dict):
  import torch  # pylint: disable=g-import-not-at-top
  hf_config = transformers.T5Config(
      vocab_size=m.vocab_size, d_model=m.hidden_size, d_kv=m.head_dim, d_ff=m.intermediate_size,
      num_layers=m.num_layers, num_decoder_layers=m.num_decoder_layers, num_heads=m.num_heads,
      relative_attention_num_buckets=m.attention.relative_num_buckets,
      relative_attention_max_distance=m.attention.relative_max_distance, dropout_rate=m.dropout_rate,
      layer_norm_epsilon=m.layer_norm_eps, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      pad_token_id=0, decoder_start_token_id=0)
  labels = np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100)
  inputs = {"input_ids": _long(b["encoder_input_tokens"]), "attention_mask": _long(b["encoder_input_mask"]),
            "decoder_input_ids": _long(b["decoder_input_tokens"]), "labels": _long(labels)}
  model = transformers.T5ForConditionalGeneration(hf_config)
  if model.lm_head.weight is model.shared.weight:  # transformers 5 ties it despite tie_word_embeddings=False.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  return model, inputs


# task.name -> (transformers, project model config, batch) -> (HF model, its keyword inputs with labels).
_HF_BUILDERS = {"bert": _hf_bert, "roberta": _hf_roberta, "gpt2": _hf_gpt2, "t5": _hf_t5}


def hf_flops_per_example(task) -> float:
  """Model FLOPs of HF's training step per example: the MLM head projects every position."""
  if task.name in ("bert", "roberta"):
    return 3.0 * bert_model.forward_flops_per_sequence(task.model_config, task.seq_len, task.seq_len)
  return task.train_flops_per_example()


def reference_notes(config) -> list[str]:
  """How the HF reference step's work differs from the project's."""
  task = _task(config)
  notes = []
  if task.name in ("bert", "roberta"):
    notes.append(f"HF projects all {task.seq_len} positions onto the vocabulary (labels -100 except masked); "
                 f"the project gathers the {task.num_predictions} masked positions first. HF's TFLOP/s and "
                 "MFU count its dense head.")
  if task.name == "gpt2":
    notes.append(f"HF shifts labels inside the model: its loss covers {task.seq_len - 1} positions, the "
                 f"project's {task.seq_len}; the matmuls are the same.")
  if task.name == "t5":
    notes.append("the project's loss adds z-loss (logsumexp squared); HF's is cross entropy alone.")
  name = config.optimizer.name
  if name != "adamw":
    notes.append(f"the project's step updates with its config's optimizer ({name}); HF's with torch AdamW.")
  return notes


def hf_case(config, autocast: bool, *, steps: int = 5, max_seconds: float = float("inf")) -> Case:
  """The HF torch model of the task's family + torch AdamW, identical shape: one training step."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  task = _task(config)
  if task.name not in _HF_BUILDERS:
    raise PretrainError(f"no HF torch reference for task {task.name!r}: add one to _HF_BUILDERS")
  batch_size = int(config.train.batch_size)
  model, inputs = _HF_BUILDERS[task.name](transformers, task.model_config, task_batch(task, batch_size))
  model.train()
  opt_cfg = config.optimizer
  optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg.learning_rate, betas=(opt_cfg.b1, opt_cfg.b2),
                                eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
  clip = float(opt_cfg.grad_clip_norm or 0.0)

  def run(n):
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**inputs).loss
      loss.backward()
      if clip > 0:  # The project's step clips too.
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
      optimizer.step()

  dtype = "bf16-autocast" if autocast else "float32"

  def report(timing):
    flops = hf_flops_per_example(task) * batch_size
    peak = metrics_lib.peak_flops_per_device(config.metrics)
    row = _throughput("hf_torch", dtype, timing, batch_size * task.tokens_per_example, flops, peak)
    row.update(model=type(model).__name__, flops_per_example=hf_flops_per_example(task),
               num_params=sum(p.numel() for p in model.parameters()),
               attn_implementation=getattr(model.config, "_attn_implementation", None))
    return row

  # No compilation to warm up: one step allocates the optimizer state.
  return Case(f"HF torch {dtype}", run, report, steps=steps, warmup=1, max_seconds=max_seconds)


# --- the input pipeline ------------------------------------------------------------


def hf_tokenizer_stand_in(vocab_size: int):
  """A transformers fast tokenizer with the project's special ids 0..4 and `vocab_size` pieces."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
  vocab.update({f"piece{i}": i for i in range(_NUM_SPECIAL, vocab_size)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]")


def _unmasked_ids(batch: dict) -> np.ndarray:
  """input_ids with the original tokens back at the masked positions (what a collator is given)."""
  ids = batch["input_ids"].copy()
  rows, cols = np.nonzero(batch["masked_lm_weights"] > 0)
  ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
  return ids


def bench_data(config, *, batches: int = 200, reference: bool = True) -> dict:
  """Examples/s of BertExamples.batch (one thread), of BatchStream, and of HF's MLM collator."""
  from pretrain.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  if config.task.name != "bert":
    raise PretrainError(f"--data times BERT's input pipeline only; task.name={config.task.name!r}")
  batch_size = int(config.train.batch_size)
  from pretrain.data import sources  # pylint: disable=g-import-not-at-top
  tokenizer, stores = sources.open_stores(config.data, config.tokenizer)
  task = families.get_task(config, tokenizer)
  examples = sources.example_source(task, stores, "train", int(config.data.seed),
                                    run_length=int(config.data.mixture_run_length))
  rows = lambda i: np.arange(i * batch_size, (i + 1) * batch_size, dtype=np.int64)
  examples.batch(rows(0))  # Plans the first epoch.

  def per_second(run) -> float:
    t0 = time.perf_counter()
    run()
    return batches * batch_size / (time.perf_counter() - t0)

  out = {"corpus_train_tokens": sum(ws.store.num_tokens("train") for ws in stores),
         "corpus_source": config.data.source,
         "batch_size": batch_size, "batches": batches}
  out["bert_examples_per_sec"] = per_second(lambda: [examples.batch(rows(i)) for i in range(1, batches + 1)])
  stream = pipeline.BatchStream(examples, batch_size, num_threads=config.data.num_threads,
                                prefetch_batches=config.data.prefetch_batches)
  next(stream)
  out["batch_stream_per_sec"] = per_second(lambda: [next(stream) for _ in range(batches)])
  out["batch_stream_threads"] = int(config.data.num_threads)
  if reference and hf_available():
    import transformers  # pylint: disable=g-import-not-at-top
    collator = transformers.DataCollatorForLanguageModeling(
        hf_tokenizer_stand_in(tokenizer.vocab_size), mlm=True, mlm_probability=0.15)
    features = [[{"input_ids": row.tolist()} for row in _unmasked_ids(examples.batch(rows(i)))]
                for i in range(batches)]
    it = iter(features)
    out["hf_collator_per_sec"] = per_second(lambda: [collator(next(it)) for _ in range(batches)])
  return out


# --- running it all ----------------------------------------------------------------


def versions() -> dict:
  v = {"jax": jax.__version__, "python": platform.python_version()}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    v.update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  return v


def run_benchmark(config, *, dtypes=("float32", "bfloat16"), reference: str = "auto", steps: int = 5,
                  windows: int = 3, warmup: int = 2, matmul: bool = True, data: bool = False,
                  breakdown_parts: bool = False, profile_ops: int = 0, reference_max_seconds: float = 180.0,
                  reference_dtypes=HF_DTYPES, log: Callable[[str], None] = lambda s: None) -> dict:
  """Every measurement the flags ask for, as one JSON-able dict."""
  if reference not in ("auto", "hf", "none"):
    raise PretrainError(f"reference={reference!r}: expected 'auto', 'hf' or 'none'")
  if reference == "hf" and not hf_available():
    raise PretrainError("reference=hf needs torch and transformers: pip install -e '.[bench]'")
  use_hf = reference == "hf" or (reference == "auto" and hf_available())
  for hf_dtype in reference_dtypes:
    if hf_dtype not in HF_DTYPES:
      raise PretrainError(f"reference dtype {hf_dtype!r}: expected one of {', '.join(HF_DTYPES)}")
  device = jax.devices()[0]
  results: dict[str, Any] = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "model": describe_model(config),
      "device": f"{jax.device_count()} x {device.device_kind} ({device.platform}), {os.cpu_count()} CPU cores",
      "versions": versions(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "windows": windows,
      "notes": reference_notes(config) if use_hf else [],
  }
  project, matmuls, hf = [], [], []
  for dtype in dtypes:
    log(f"compiling the project's train step, {dtype} ...")
    project.append(project_case(config, dtype, steps=steps, warmup=warmup))
    if matmul:
      matmuls += [matmul_case(shape, dtype) for shape in matmul_shapes(config)]
  if use_hf:
    for hf_dtype in reference_dtypes:
      autocast = hf_dtype == "bf16-autocast"
      hf.append(hf_case(config, autocast, steps=steps, max_seconds=reference_max_seconds))
      if matmul:
        matmuls += [torch_matmul_case(shape, autocast) for shape in matmul_shapes(config)]
  log(f"timing {len(project + hf + matmuls)} cases, {windows} windows each, round robin ...")
  rows = run_cases(project + hf + matmuls, windows)
  results["project"] = rows[:len(project)]
  results["hf"] = rows[len(project):len(project) + len(hf)]
  results["matmul"] = rows[len(project) + len(hf):]

  for r in results["project"]:
    same = [m["flops_per_sec"] for m in results["matmul"] if m["engine"] == "jax" and m["dtype"] == r["dtype"]]
    if same:
      r["of_matmul_peak"] = r["tflops_per_sec"] * 1e12 / (max(same) * jax.device_count())
  results["ratios"] = {}
  hf_tokens = {r["dtype"]: r["tokens_per_sec"] for r in results["hf"]}
  for r in results["project"]:
    for hf_dtype, tokens in hf_tokens.items():
      if r["dtype"] == "float32" and hf_dtype != "float32":
        continue  # float32 is compared with float32 only.
      results["ratios"][f"project {r['dtype']} / HF torch {hf_dtype}"] = r["tokens_per_sec"] / tokens
  if breakdown_parts:
    for case, r in zip(project, results["project"]):
      log(f"timing the parts of the {r['dtype']} step ...")
      r["breakdown_ms"] = breakdown(case, steps=steps, windows=windows)
  if profile_ops:
    for case, r in zip(project, results["project"]):
      log(f"profiling the {r['dtype']} forward+backward ...")
      r["top_ops"] = top_ops(case, top=profile_ops)
  if data:
    log("input pipeline ...")
    results["data"] = bench_data(config, reference=use_hf)
  return results


def format_table(results: dict) -> str:
  """The results as a readable plain-text table."""
  lines = [results["model"], f"{results['device']}; " +
           ", ".join(f"{k} {v}" for k, v in results["versions"].items()) +
           (f"; XLA_FLAGS={results['xla_flags']}" if results["xla_flags"] else ""), ""]
  header = (f"{'':26}{'tokens/s':>10}{'step ms':>9}{'windows min-max':>17}{'TFLOP/s':>9}{'MFU':>7}"
            f"{'of matmul peak':>16}")
  lines += [header, "-" * len(header)]
  for r in results["project"] + results["hf"]:
    name = f"{'project' if r['name'] == 'project' else 'HF torch'} {r['dtype']}"
    of_peak = f"{r['of_matmul_peak']:.1%}" if "of_matmul_peak" in r else "-"
    spread = f"{min(r['window_step_seconds']) * 1e3:.0f}-{max(r['window_step_seconds']) * 1e3:.0f}"
    lines.append(f"{name:26}{r['tokens_per_sec']:>10,.0f}{r['step_seconds'] * 1e3:>9.1f}{spread:>17}"
                 f"{r['tflops_per_sec']:>9.4f}{r['mfu']:>7.1%}{of_peak:>16}")
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
      lines.append(f"project {r['dtype']} breakdown (ms, each part jitted alone): " +
                   ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown_ms"].items()) +
                   f"; full step {r['step_seconds'] * 1e3:.1f}")
  for r in results["project"]:
    if "top_ops" in r:
      lines += ["", f"project {r['dtype']} forward+backward, slowest XLA ops (ms per step, share of the step):"]
      lines += [f"  {o['ms']:8.1f} {o['share']:6.1%}  {o['op']:32} {o['from']}" for o in r["top_ops"]]
  if "data" in results:
    d = results["data"]
    lines += ["", f"input pipeline (batch {d['batch_size']}, examples/s): "
              f"BertExamples.batch 1 thread {d['bert_examples_per_sec']:,.0f}; "
              f"BatchStream {d['batch_stream_threads']} threads {d['batch_stream_per_sec']:,.0f}" +
              (f"; HF DataCollatorForLanguageModeling {d['hf_collator_per_sec']:,.0f}"
               if "hf_collator_per_sec" in d else "")]
  return "\n".join(lines)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file("config", "configs/bert_tiny.py", "Config file.", lock_config=True)
  flags.DEFINE_integer("steps", 5, "Timed steps per window.")
  flags.DEFINE_integer("windows", 3, "Timing windows; the median window is reported.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the project's step.")
  flags.DEFINE_enum("reference", "auto", ["auto", "hf", "none"],
                    "HF torch reference; auto = when torch and transformers import.")
  flags.DEFINE_float(
      "reference_max_seconds", 180.0, "Stop timing a reference after this long (at least one window).")
  flags.DEFINE_list("reference_dtypes", list(HF_DTYPES), "HF torch modes to time.")
  flags.DEFINE_bool("matmul", True, "Measure the matmul peak of each dtype.")
  flags.DEFINE_bool("data", False, "Benchmark the input pipeline too (over the token store; a small corpus is prepared first).")
  flags.DEFINE_bool("breakdown", False, "Time forward, backward and the optimizer update alone.")
  flags.DEFINE_integer("profile_ops", 0, "List the N slowest XLA ops of forward+backward (jax.profiler).")
  flags.DEFINE_string("json_out", "", "Also write the results here as JSON.")


def main(argv):
  cli.quiet_library_logs()
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name,redefined-outer-name
  try:
    results = run_benchmark(
        FLAGS.config, dtypes=tuple(FLAGS.dtypes), reference=FLAGS.reference, steps=FLAGS.steps,
        windows=FLAGS.windows, warmup=FLAGS.warmup, matmul=FLAGS.matmul, data=FLAGS.data,
        breakdown_parts=FLAGS.breakdown, profile_ops=FLAGS.profile_ops, reference_max_seconds=FLAGS.reference_max_seconds,
        reference_dtypes=tuple(FLAGS.reference_dtypes),
        log=lambda s: print(s, file=sys.stderr, flush=True))
  except PretrainError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
