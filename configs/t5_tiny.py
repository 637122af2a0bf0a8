"""A tiny T5 v1.1 (hidden size 128, 2 + 2 layers) on the embedded corpus: the CPU demo of span corruption.

  python -m pretrain.train --config=configs/t5_tiny.py --workdir=runs/t5_tiny

Trains an 8,192-piece sentencepiece vocabulary on CPython's own documentation
once (cached) and adds 100 sentinels; 150 steps of batch 32 with inputs 128 /
targets 29 (141 raw tokens per example), bf16 compute, and T5's own recipe at
small scale: Adafactor, lr 1e-2 held for 50 steps then 1/sqrt decay.

Expected: loss 8.13 at step 10 -> 6.02 at step 30 -> 5.29 at step 100 -> 5.20
at step 150 (token accuracy 0.06 -> 0.28); eval loss 5.41 at step 75 -> 5.25
at step 150 (the corpus's unigram level is 6.60 nats; the targets also hold
the sentinels, so it bounds only their span tokens: BENCHMARKS.md, "Demo
recipes"). Run the command again and it resumes from the last checkpoint.
Wall clock: BENCHMARKS.md.
"""

from pretrain.families.t5.config import t5_config


def get_config():
  c = t5_config()
  c.tokenizer.vocab_size = 8192  # + 100 sentinels -> model vocabulary 8,320.
  c.data.inputs_length = 128
  c.model.update(
    hidden_size=128,
    intermediate_size=256,
    head_dim=32,
    num_heads=4,
    num_layers=2,
    num_decoder_layers=2,
  )
  c.optimizer.update(learning_rate=1e-2, warmup_steps=50)
  c.train.update(steps=150, batch_size=32, log_every=10)
  c.eval.update(every_steps=75, batch_size=32, num_batches=4)
  c.checkpoint.update(every_steps=75, keep=2)
  return c
