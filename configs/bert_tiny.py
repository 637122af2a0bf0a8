"""A tiny BERT (L4 H256 A4) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Trains a sentencepiece vocabulary of 8,192 pieces on CPython's own
documentation once (cached), then 200 steps of MLM+NSP at batch 32 x 128
tokens in bf16 compute with float32 accumulation.

Expected: loss 9.6 at step 10 -> 7.37 at step 200 (MLM 6.68, masked-LM
accuracy 0.047; eval MLM loss 6.68, accuracy 0.042); NSP stays at chance
(~0.5) at this budget. Run the command again and it resumes from the last
checkpoint (and stops at once when the run is complete). Wall clock: BENCHMARKS.md.
"""

from pretrain.families.bert.config import bert_config


def get_config():
  c = bert_config()
  c.tokenizer.vocab_size = 8192
  c.model.update(
    hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, dtype="bfloat16"
  )
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optimizer.update(learning_rate=1e-3, warmup_steps=20)
  c.train.update(steps=200, batch_size=32, log_every=10)
  c.eval.update(every_steps=100, batch_size=32, num_batches=8)
  c.checkpoint.update(every_steps=100, keep=2)
  return c
