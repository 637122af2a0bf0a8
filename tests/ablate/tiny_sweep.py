"""A sweep of tiny BERT variants on the test corpus, for the ablation tests (and the gs:// one).

A test module imports it by putting tests/ablate/ on sys.path.
"""

import ml_collections


def tiny_sweep(corpus_path: str, variants: dict, **settings) -> ml_collections.ConfigDict:
  """Variants of a 1-layer BERT, 4 steps of 8 x 32 tokens; `settings` are sweep keys (seeds, ...)."""
  s = ml_collections.ConfigDict()
  s.base = "configs/bert_tiny.py"
  s.base_overrides = dict(
    data=dict(
      source="text", paths=corpus_path, max_seq_length=32, max_predictions_per_seq=5, num_threads=1
    ),
    tokenizer=dict(vocab_size=512),
    model=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, dtype="float32"),
    train=dict(steps=4, batch_size=8, log_every=2),
    optimizer=dict(warmup_steps=2),
    eval=dict(every_steps=2, batch_size=8, num_batches=1),
    checkpoint=dict(every_steps=0),  # At the end (or a stop) only.
    metrics=dict(progress_bar=False),
  )
  s.variants = variants
  s.seeds = settings.pop("seeds", 1)
  s.update(settings)
  return s
