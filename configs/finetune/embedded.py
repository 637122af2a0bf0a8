"""The embedded downstream task: which of six standard-library packages a docstring sentence comes from.

No download (pretrain/finetune/tasks/embedded.py builds it from CPython's sources;
dev sentences come from held-out modules). After the quick start's pretraining run:

  python -m pretrain.finetune --config=configs/finetune/embedded.py \\
    --config.init_from=runs/bert_tiny --workdir=runs/bert_tiny_embedded
  python -m pretrain.finetune --config=configs/finetune/embedded.py \\
    --config.init_from=runs/bert_tiny --config.finetune.random_init=True \\
    --workdir=runs/bert_tiny_embedded_random     # the same model from random init

The head reads the mean of the encoder's outputs over the real tokens (`finetune.head=mean`; '' for
the family's own, BERT's pooled [CLS]): bert_tiny's next-sentence task stays at chance, so its [CLS]
position learns nothing a classifier could read. From a RoPE bert_tiny of 400 x 32 steps the pooled
[CLS] scored below the same model from random init (64.9% against 77.3%), the mean above it (84.6%
against 81.2%); from today's bert_tiny (800 x 16) the mean gives 79.9% against 81.2%: one seed each,
so pretraining does not yet beat random init reliably here (BENCHMARKS.md, "Fine-tuning").

3 epochs of 2,614 sentences at batch 32 x 64 tokens (246 steps), lr 1e-3: a tiny model
needs a larger rate than BERT-base's 2e-5 (an L2/H64 BERT from random init at 2e-4 stayed below the
majority class's 32% in 246 steps, at 1e-3 it reached 43%). Figures: BENCHMARKS.md.
"""

from pretrain.finetune.config import finetune_config


def get_config():
  c = finetune_config("embedded")
  c.finetune.update(head="mean", max_seq_length=64, epochs=3.0, learning_rates="3e-4,1e-3")
  c.optimizer.learning_rate = 1e-3
  c.train.log_every = 25
  c.checkpoint.every_steps = 100
  return c
