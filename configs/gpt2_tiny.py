"""A tiny GPT-2 (L4 H256 A4) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/gpt2_tiny.py --workdir=runs/gpt2_tiny

Trains an 8,192-piece sentencepiece vocabulary on CPython's own documentation
once (cached), then 120 steps of next-token
prediction at batch 16 x 128 tokens (chunked; 0.8 epochs of the 316k-token
corpus), in bf16 compute with float32 accumulation, no dropout.

Expected: loss 8.57 at step 10 -> 6.13 at step 120 (accuracy 0.10; ln 8192 =
9.01 at init); eval loss 6.34 at step 60 -> 6.07 at step 120 (perplexity
432), well below the corpus's unigram level (the held-out cross-entropy
under the train split's unigram distribution is 6.60 nats: BENCHMARKS.md,
"Demo recipes"); the same figures in two runs. Run the command again and it resumes from
the last checkpoint (and stops at once when the run is complete).
`--config.data.packing=True` packs whole documents instead (0.5% padding on
this corpus). Wall clock: BENCHMARKS.md.
"""

from pretrain.families.gpt2.config import gpt2_config


def get_config():
  c = gpt2_config()
  c.tokenizer.update(vocab_size=8192, model_type="unigram")
  c.model.update(
    vocab_size=0,
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=1024,
    max_position_embeddings=128,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  c.data.max_seq_length = 128
  c.optimizer.update(learning_rate=1e-3, warmup_steps=10, end_learning_rate=1e-4)
  c.train.update(steps=120, batch_size=16, log_every=10)
  c.eval.update(every_steps=60, batch_size=32, num_batches=4)
  c.checkpoint.update(every_steps=60, keep=2)
  return c
