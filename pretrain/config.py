"""Default configuration shared by every config in configs/.

Each top-level section is read by one module: `task` by pretrain/families, `data`
by pretrain/data, `tokenizer` by pretrain/data/tokenizer_files.py, `model` by
pretrain/models, `optimizer` by pretrain/training/optimizer.py, `mesh` by
pretrain/sharding.py, `checkpoint` by pretrain/checkpoint.py, and `train`,
`eval`, `metrics` by pretrain/train.py. A config file calls `base_config()` and
overrides what its paper or experiment changes.
"""
from typing import Any

import ml_collections


def field(section: Any, name: str, default: Any = None) -> Any:
  """`section.name` of a config section, or of a plain dict (tests and prepare's JSON plans pass dicts)."""
  return section.get(name, default) if isinstance(section, dict) else getattr(section, name, default)


def attention_config(**overrides) -> ml_collections.ConfigDict:
  """The `model.attention` section: MHA with the family's positions, plain XLA kernels."""
  return ml_collections.ConfigDict(dict(dict(
      backend="xla",  # 'xla', 'dot_product_attention', 'pallas_gpu', 'splash_tpu' or 'auto'.
      num_kv_heads=0,  # 0: num_heads (MHA); 1: multi-query; a divisor of num_heads: grouped-query.
      position="learned",  # 'learned', 'sinusoidal', 'rope', 'alibi', 'relative_bias' or 'none'.
      rope_theta=10000.0,
      rotary_fraction=1.0,
      relative_num_buckets=32,
      relative_max_distance=128,
      qk_norm="none",  # 'none', 'layernorm' or 'rmsnorm'.
      logits_soft_cap=0.0,
      sliding_window=0,
  ), **overrides))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.task = ml_collections.ConfigDict(dict(name="bert"))
  # Params to start a new run from (continued pretraining): a `python -m pretrain.convert from-hf`
  # output, another run's workdir or one of its step folders. A resumed run ignores it.
  c.init_from = ""

  c.data = ml_collections.ConfigDict(dict(
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
      max_seq_length=128,
      short_seq_prob=0.1,
      masked_lm_prob=0.15,
      max_predictions_per_seq=20,
      whole_word_masking=False,
      next_sentence_prediction=True,
      seed=0,
      num_threads=2,  # grain reader threads building examples off the training thread.
      prefetch_batches=4,
  ))

  c.tokenizer = ml_collections.ConfigDict(dict(
      path="",  # A sentencepiece .model; '' trains one on the corpus once and caches it.
      vocab_size=30522,
      model_type="unigram",
      # Training reads a bounded sample of the corpus: at most sample_bytes (0: 1 GiB), spread over its
      # input units; of a corpus larger than that, sentencepiece keeps input_sentence_size sentences
      # (0: 10M) drawn with a fixed seed.
      sample_bytes=0,
      input_sentence_size=0,
  ))

  c.model = ml_collections.ConfigDict(dict(
      vocab_size=0,  # 0: the tokenizer's vocabulary size.
      hidden_size=768,
      num_layers=12,
      num_heads=12,
      intermediate_size=3072,
      max_position_embeddings=512,
      type_vocab_size=2,
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      layer_norm_eps=1e-12,
      initializer_range=0.02,
      dtype="float32",  # Compute dtype; params stay float32, matmuls accumulate in float32.
      scan_layers=False,
      remat_policy="none",  # 'none', 'full' or a jax.checkpoint_policies name.
      # The attention variant: pretrain/models/attention.py AttentionConfig. 0 means "none" for
      # num_kv_heads (= num_heads), logits_soft_cap and sliding_window.
      attention=attention_config(position="learned"),
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
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
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1_000_000,
      batch_size=256,  # Global, in sequences.
      grad_accum_steps=1,  # Microbatches per step; batch_size must divide evenly.
      seed=0,
      log_every=100,
  ))

  c.eval = ml_collections.ConfigDict(dict(
      every_steps=10_000,  # 0 disables.
      batch_size=64,
      num_batches=20,
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=10_000,
      keep=3,
      async_save=True,
  ))

  c.metrics = ml_collections.ConfigDict(dict(
      # Peak FLOP/s of one device for MFU; 0 looks the device kind up (CPU: cpu_peak_flops).
      peak_flops_per_device=0.0,
      cpu_peak_flops=130e9,
      progress_bar=True,
  ))
  return c
