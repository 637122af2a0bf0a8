"""A tiny BERT (L4 H128 A4, pre-LN) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Trains a sentencepiece vocabulary of 4,096 pieces on CPython's own
documentation once (cached), then 400 steps of MLM+NSP at batch 32 x 128
tokens (1.6M tokens, ~5 epochs of the 340k-token corpus) in bf16 compute with
float32 accumulation. The demo recipe (BENCHMARKS.md, "Demo recipes") differs
from the paper's where a few-minute CPU run needs it: pre-LN blocks
(`model.pre_layer_norm`, which `pretrain.convert to-hf` refuses: set it False
for an HF-exportable model), width 128, no dropout, lr 1e-3 after 40 warmup
steps, and a 4,096-piece vocabulary.

Expected: loss 9.00 at step 10 -> 7.10 at step 100 (the unigram plateau,
masked-LM accuracy 0.05) -> 6.97 at step 400 (MLM 6.27, accuracy 0.085);
eval MLM loss 6.29 at step 200 -> 6.18 at step 400 (accuracy 0.071 -> 0.079),
below the 6.37 nats of predicting from token frequencies alone, so the model
reads context, but not yet enough for sensible fill-mask answers (sample.py
still ranks frequent pieces first); NSP stays at chance (~0.5).
Run the command again and it resumes from the last checkpoint (and stops at
once when the run is complete). Wall clock: BENCHMARKS.md.
"""

from pretrain.families.bert.config import bert_config


def get_config():
  c = bert_config()
  c.tokenizer.vocab_size = 4096
  c.model.update(
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    intermediate_size=512,
    pre_layer_norm=True,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype="bfloat16",
  )
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optimizer.update(learning_rate=1e-3, warmup_steps=40)
  c.train.update(steps=400, batch_size=32, log_every=10)
  c.eval.update(every_steps=200, batch_size=32, num_batches=8)
  c.checkpoint.update(every_steps=200, keep=2)
  return c
