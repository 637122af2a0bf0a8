"""The embedded word-order task: is a docstring sentence as written, or are its inner words shuffled?

No download (pretrain/finetune/tasks/word_order.py builds it from the same CPython docstrings as
the package task, dev sentences from held-out modules). After the quick start's pretraining run:

  python -m pretrain.finetune --config=configs/finetune/embedded_order.py \\
    --config.init_from=runs/bert_tiny --workdir=runs/bert_tiny_order
  python -m pretrain.finetune --config=configs/finetune/embedded_order.py \\
    --config.init_from=runs/bert_tiny --config.finetune.random_init=True \\
    --workdir=runs/bert_tiny_order_random     # the same model from random init

Expected (bert_tiny of the quick start, 3 seeds): dev accuracy ~0.78 from the checkpoint against
~0.49 (chance) from random init; ~2 minutes each on two idle cores. The recipe is the package
task's (configs/finetune/embedded.py): 3 epochs of 2,614 sentences at batch 32 x 64 tokens (246
steps), lr 1e-3, the mean head. Figures: BENCHMARKS.md, "Fine-tuning".
"""

from pretrain.finetune.config import finetune_config


def get_config():
  c = finetune_config("embedded_order")
  c.finetune.update(head="mean", max_seq_length=64, epochs=3.0, learning_rates="3e-4,1e-3")
  c.optimizer.learning_rate = 1e-3
  c.train.log_every = 25
  c.checkpoint.every_steps = 100
  return c
