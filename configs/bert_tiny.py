"""A tiny BERT (L4 H128 A4, pre-LN, RoPE) on the embedded corpus: the CPU demo.

  python -m pretrain.train --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Trains a sentencepiece vocabulary of 4,096 pieces on CPython's own
documentation once (cached), then 1,200 steps of MLM+NSP at batch 16 x 128
tokens (2.5M tokens, ~7 epochs of the 340k-token corpus) in bf16 compute with
float32 accumulation. The demo recipe (BENCHMARKS.md, "Demo recipes") differs
from the paper's where a few-minute CPU run needs it: pre-LN blocks
(`model.pre_layer_norm`) and rotary positions (`model.attention.position=rope`),
both of which `pretrain.convert to-hf` refuses (set them to False / 'learned'
for an HF-exportable model); width 128, no dropout, 30% of the tokens masked
(40 predictions a sequence), batch 16 (twice the updates of batch 32 for the
same tokens: the larger lever at this budget), lr 2e-3 after 120 warmup steps,
and a 4,096-piece vocabulary.

Expected: loss 9.00 at step 10 -> 7.12 at step 100 (the unigram plateau,
masked-LM accuracy 0.06) -> 5.03 at step 1,200 (MLM 4.36, accuracy 0.28); eval
MLM loss 5.10 at step 600 -> 4.33 at step 1,200 (accuracy 0.198 -> 0.281),
2.0 nats below the 6.37 nats of predicting from token frequencies alone.
Fill-mask answers are sensible words of the right kind (`pretrain.sample
--prompt="If the argument is omitted, it [MASK] to None."`: `is` 0.17,
`defaults` 0.06). NSP stays at chance (~0.5): the [CLS] position learns
nothing, which is why configs/finetune/*.py read the mean of the tokens
instead; configs/finetune/embedded_order.py shows what the run taught the
model (dev accuracy 0.87 from it, chance from random init). Run the command again and it resumes from the
last checkpoint (and stops at once when the run is complete). Wall clock:
BENCHMARKS.md.
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
  c.model.attention.position = "rope"
  c.data.update(max_seq_length=128, masked_lm_prob=0.3, max_predictions_per_seq=40)
  c.optimizer.update(learning_rate=2e-3, warmup_steps=120)
  c.train.update(steps=1200, batch_size=16, log_every=10)
  c.eval.update(every_steps=600, batch_size=32, num_batches=8)
  c.checkpoint.update(every_steps=600, keep=2)
  return c
