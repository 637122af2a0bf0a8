"""A tiny RoBERTa (L4 H256 A4) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/roberta_tiny.py --workdir=runs/roberta_tiny

Trains a sentencepiece BPE vocabulary of 8,192 pieces on CPython's own
documentation once (cached), then masked-LM steps on FULL-SENTENCES blocks of
up to 128 tokens (batch 32; blocks fill 85% of the 128 positions) in bf16
compute with float32 accumulation, with RoBERTa's optimizer settings (betas
(0.9, 0.98), eps 1e-6) at a CPU-sized learning rate and warmup.

Expected: loss 8.81 at step 10 -> 7.94 (step 20) -> 6.97 (step 50) -> 6.87 at
step 100 (masked-LM accuracy 0.025 -> 0.050); eval MLM loss 6.80 at step 50,
6.76 at step 100. Wall clock and input-pipeline rate: BENCHMARKS.md.
"""

from pretrain.families.roberta.config import roberta_config


def get_config():
  c = roberta_config()
  c.tokenizer.vocab_size = 8192
  c.model.update(
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=1024,
    max_position_embeddings=130,
    dtype="bfloat16",
  )
  c.data.update(max_seq_length=128, max_predictions_per_seq=20)
  c.optimizer.update(learning_rate=1e-3, warmup_steps=20)
  c.train.update(steps=100, batch_size=32, log_every=10)
  c.eval.update(every_steps=50, batch_size=32, num_batches=8)
  c.checkpoint.update(every_steps=50, keep=2)
  return c
