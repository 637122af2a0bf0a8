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
position learns nothing a classifier could read. From today's bert_tiny (1,200 x 16 steps), 3
seeds: 78.9% +- 1.4 against 81.9% +- 1.0 from random init (paired t-test p = 0.045; from the
800-step bert_tiny before it 80.1% +- 1.3, p = 0.25): a few minutes of pretraining do not teach a
tiny model the topics this task asks for, and 2,614 labelled sentences teach them from scratch.
configs/finetune/embedded_order.py is the task where the same checkpoint beats random init
(BENCHMARKS.md, "Fine-tuning").

3 epochs of 2,614 sentences at batch 32 x 64 tokens (246 steps), lr 1e-3: a tiny model
needs a larger rate than BERT-base's 2e-5 (an L2/H64 BERT from random init at 2e-4 stayed below the
majority class's 32% in 246 steps, at 1e-3 it reached 43%). Figures: BENCHMARKS.md.
"""

from pretrain.finetune.config import embedded_config


def get_config():
  return embedded_config("embedded")
