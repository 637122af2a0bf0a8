"""The embedded word-order task: is a docstring sentence as written, or are its inner words shuffled?

No download (pretrain/finetune/tasks/word_order.py builds it from the same CPython docstrings as
the package task, dev sentences from held-out modules). After the quick start's pretraining run:

  python -m pretrain.finetune --config=configs/finetune/embedded_order.py \\
    --config.init_from=runs/bert_tiny --workdir=runs/bert_tiny_order
  python -m pretrain.finetune --config=configs/finetune/embedded_order.py \\
    --config.init_from=runs/bert_tiny --config.finetune.random_init=True \\
    --workdir=runs/bert_tiny_order_random     # the same model from random init

Expected (the quick start's bert_tiny, 3 seeds): dev accuracy 86.7% +- 1.1 from the checkpoint
against 51.4% +- 0.5 (chance) from random init, paired t-test p = 0.0007; ~2 minutes a run beside
other jobs. The recipe is the package
task's (configs/finetune/embedded.py): 3 epochs of 2,614 sentences at batch 32 x 64 tokens (246
steps), lr 1e-3, the mean head. Figures: BENCHMARKS.md, "Fine-tuning".
"""

from pretrain.finetune.config import embedded_config


def get_config():
  return embedded_config("embedded_order")
