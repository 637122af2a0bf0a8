"""A tiny RoBERTa (L4 H128 A4, pre-LN) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/roberta_tiny.py --workdir=runs/roberta_tiny

Trains a sentencepiece BPE vocabulary of 4,096 pieces on CPython's own
documentation once (cached), then 1,200 masked-LM steps on FULL-SENTENCES blocks
of up to 128 tokens (batch 16; blocks fill 85% of the 128 positions) in bf16
compute with float32 accumulation, with RoBERTa's optimizer settings (betas
(0.9, 0.98), eps 1e-6) and bert_tiny's demo recipe (BENCHMARKS.md, "Demo
recipes"): pre-LN blocks (`model.pre_layer_norm`; `pretrain.convert to-hf`
refuses them), width 128, no dropout, lr 2e-3 after 120 warmup steps, batch 16
for twice the updates of batch 32. bert_tiny's rotary positions do not combine
with RoBERTa's offset position table, so this keeps the learned one.

Expected: eval MLM loss 6.26 at step 600 -> 6.13 at step 1,200 (accuracy 0.097 ->
0.118), below the 6.65 nats of predicting from token frequencies alone for
this vocabulary (BENCHMARKS.md, "Demo recipes"; the 800 steps at lr 1e-3 before
ended at 6.30, 0.093): it reads context, less than bert_tiny does with its
rotary positions (0.281), not yet enough for sensible fill-mask answers. Wall
clock and input-pipeline rate: BENCHMARKS.md.
"""

from pretrain.families.roberta.config import roberta_config


def get_config():
  c = roberta_config()
  c.tokenizer.vocab_size = 4096
  c.model.update(
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    intermediate_size=512,
    max_position_embeddings=130,
    pre_layer_norm=True,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype="bfloat16",
  )
  c.data.update(max_seq_length=128, max_predictions_per_seq=20)
  c.optimizer.update(learning_rate=2e-3, warmup_steps=120)
  c.train.update(steps=1200, batch_size=16, log_every=10)
  c.eval.update(every_steps=600, batch_size=32, num_batches=8)
  c.checkpoint.update(every_steps=600, keep=2)
  return c
