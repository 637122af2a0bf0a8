"""The configuration sections every family shares, and the helpers that build a family's own.

Each top-level section is read by one module: `task` by pretrain/families, `data`
by pretrain/data (and the family's example builder), `tokenizer` by
pretrain/data/tokenizer_files.py, `model` by the family's model, `optimizer` by
pretrain/training/optimizer.py, `mesh` by pretrain/sharding.py, `checkpoint` by
pretrain/checkpoint.py, and `train`, `eval`, `metrics` by pretrain/train.py.
`base_config()` holds the family-independent sections and keys; a family's
config function (pretrain.families.<family>.config: bert_config, roberta_config,
gpt2_config, t5_config) adds its task name, its data keys and its model section,
both written from the family's dataclasses by `section`. A config file calls
the family's function and overrides what its paper or experiment changes.
"""

import dataclasses
import logging
import math
import typing
from typing import Any

import ml_collections

from pretrain.errors import PretrainError
from pretrain.training import compile_cache
from pretrain.training import profiling


def field(section: Any, name: str, default: Any = None) -> Any:
  """`section.name` of a config section, or of a plain dict (tests and prepare's JSON plans pass dicts)."""
  return (
    section.get(name, default) if isinstance(section, dict) else getattr(section, name, default)
  )


def section(value: Any) -> ml_collections.ConfigDict:
  """The config section of a frozen config dataclass: every field at its value, nested dataclasses as sections.

  A family's model dataclass is the schema of its `model` section, an example
  config's of the `data` keys it reads. A None in an int or float field is
  written 0 (0.0), which `from_dict` reads back as None (a command-line override
  cannot change a None field's type); a None in any other field (e.g.
  AttentionConfig.interpret) is left out, so the dataclass default applies.
  """
  hints = typing.get_type_hints(type(value))
  out = {}
  for f in dataclasses.fields(value):
    v = getattr(value, f.name)
    if dataclasses.is_dataclass(v):
      v = section(v)
    elif v is None:
      types = typing.get_args(hints[f.name])
      if float in types:
        v = 0.0
      elif int in types:
        v = 0
      else:
        continue
    out[f.name] = v
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.task = ml_collections.ConfigDict(
    dict(name="")
  )  # The family: a key of pretrain.families.FAMILIES.
  # Params to start a new run from (continued pretraining): a `python -m pretrain.convert from-hf`
  # output, another run's workdir or one of its step folders. A resumed run ignores it.
  c.init_from = ""

  c.data = ml_collections.ConfigDict(
    dict(
      # 'embedded' (CPython's own docs), 'text' (BERT format) or 'jsonl', prepared into the cache on
      # first use; or 'prepared': stores made by `python -m pretrain.prepare` (pretrain/data/sources.py).
      source="embedded",
      paths="",  # Globs, comma separated, for 'text' and 'jsonl' (local or gs://); store folders for 'prepared'.
      mixture="",  # Stores with weights, 'DIR=W,DIR=W' (data.source='prepared', data.paths empty).
      # Consecutive global examples drawn from one shard: large, so that a process stays on a shard for
      # several steps (each switch loads a shard's index and plans it, ~0.1 s for 64 MB of text), but a
      # batch then holds examples of one or two shards (pretrain/data/sources.py).
      mixture_run_length=4096,
      auto_prepare_max_mb=1024.0,  # Raw corpora up to this size are prepared on the fly; larger: pretrain.prepare.
      text_field="text",  # JSONL field holding a document.
      heldout_fraction=0.02,
      seed=0,
      num_threads=2,  # grain reader threads building examples off the training thread.
      prefetch_batches=4,
    )
  )

  c.tokenizer = ml_collections.ConfigDict(
    dict(
      path="",  # A sentencepiece .model; '' trains one on the corpus once and caches it.
      vocab_size=30522,
      model_type="unigram",
      # Training reads a bounded sample of the corpus: at most sample_bytes (0: 1 GiB), spread over its
      # input units; of a corpus larger than that, sentencepiece keeps input_sentence_size sentences
      # (0: 10M) drawn with a fixed seed.
      sample_bytes=0,
      input_sentence_size=0,
    )
  )

  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",  # 'adamw' or 'lamb'.
      learning_rate=1e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.01,
      warmup_steps=10_000,
      decay="linear",  # 'linear' (to 0 at train.steps, as BERT), 'cosine' or 'constant'.
      end_learning_rate=0.0,
      grad_clip_norm=1.0,
    )
  )

  c.train = ml_collections.ConfigDict(
    dict(
      steps=1_000_000,
      batch_size=256,  # Global, in sequences.
      grad_accum_steps=1,  # Microbatches per step; batch_size must divide evenly.
      seed=0,
      log_every=100,
      # A step whose loss or gradients are not finite is skipped (params and optimizer moments kept,
      # the step counter advances); the run stops when more than this many in a row were skipped.
      max_skipped_steps=0,
      # jax's persistent compilation cache (a folder or gs://; '' for none): a restarted job loads its
      # compiled steps from it. Programs faster to compile than min_compile_seconds are not written
      # (0: every program). Trusted code: nobody else may write there (pretrain/training/compile_cache.py).
      compilation_cache_dir="",
      compilation_cache_min_compile_seconds=1.0,
    )
  )

  c.eval = ml_collections.ConfigDict(
    dict(
      every_steps=10_000,  # 0 disables.
      batch_size=64,
      num_batches=20,
    )
  )

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.checkpoint = ml_collections.ConfigDict(
    dict(
      every_steps=10_000,
      keep=3,
      async_save=True,
      # Resume a checkpoint's params, step, data position and progress with a new optimizer state, for
      # a run that switches optimizer (adamw -> lamb), clipping or learning-rate schedule mid-run.
      # Without it such a switch is refused. It applies once: a checkpoint saved after the reset with
      # the same optimizer settings resumes as usual.
      reset_optimizer=False,
    )
  )

  c.metrics = ml_collections.ConfigDict(
    dict(
      # Peak FLOP/s of one device for MFU; 0 looks the device kind up (CPU: cpu_peak_flops).
      peak_flops_per_device=0.0,
      cpu_peak_flops=130e9,
      progress_bar=True,
      # 'START,END': a jax.profiler trace of steps START..END into the workdir's TensorBoard dir
      # (pretrain/training/profiling.py), by process 0 unless profile_all_processes.
      profile_steps="",
      profile_all_processes=False,
    )
  )
  return c


def _at_least(section, key: str, low: int, config) -> None:
  value = config[section].get(key, low)
  if not isinstance(value, int) or value < low:
    raise PretrainError(f"{section}.{key}={value!r} must be an integer >= {low}")


def validate(config, mesh) -> None:
  """PretrainError for a value of the shared sections outside its domain, or a batch the mesh cannot split."""
  t = config.train
  if t.steps <= 0:
    raise PretrainError(f"train.steps={t.steps} must be positive")
  for section, key, low in (
    ("train", "batch_size", 1),
    ("train", "log_every", 1),
    ("eval", "every_steps", 0),  # 0: no evals.
    ("checkpoint", "every_steps", 0),  # 0: a checkpoint at the end (or on a stop) only.
    ("checkpoint", "keep", 1),
    ("data", "num_threads", 0),
    ("data", "prefetch_batches", 0),
    ("data", "mixture_run_length", 1),
  ):
    _at_least(section, key, low, config)
  if config.eval.every_steps:
    _at_least("eval", "batch_size", 1, config)
    _at_least("eval", "num_batches", 1, config)
  for key, domain in (("peak_flops_per_device", ">= 0"), ("cpu_peak_flops", "> 0")):
    value = config.metrics[key]  # peak_flops_per_device 0: looked up from the device kind.
    if not (
      isinstance(value, (int, float))
      and math.isfinite(value)
      and (value > 0 or (value == 0 and domain == ">= 0"))
    ):
      raise PretrainError(f"metrics.{key}={value!r} must be a finite number {domain}")
  profiling.parse_steps(config.metrics.get("profile_steps", ""))
  compile_cache.check(config.train)
  if config.optimizer.decay != "rsqrt" and config.optimizer.warmup_steps > t.steps:
    logging.getLogger("pretrain.train").warning(
      "optimizer.warmup_steps=%d is longer than the run (train.steps=%d): the learning rate never "
      "reaches optimizer.learning_rate",
      config.optimizer.warmup_steps,
      t.steps,
    )
  if t.grad_accum_steps <= 0 or t.batch_size % t.grad_accum_steps:
    raise PretrainError(
      f"train.batch_size={t.batch_size} must be a multiple of train.grad_accum_steps={t.grad_accum_steps}"
    )
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = t.batch_size // t.grad_accum_steps
  if micro % shards:
    raise PretrainError(
      f"microbatch of {micro} sequences (train.batch_size / train.grad_accum_steps) does not split over "
      f"the {shards} data-parallel shards of mesh {dict(mesh.shape)}"
    )
  if config.eval.every_steps and config.eval.batch_size % shards:
    raise PretrainError(
      f"eval.batch_size={config.eval.batch_size} does not split over {shards} shards"
    )
