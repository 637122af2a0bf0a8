"""BERT-base pretraining as published (Devlin et al. 2018).

L12 H768 A12, 110,106,428 parameters with a 30,522-piece vocabulary; AdamW
lr 1e-4, betas (0.9, 0.999), weight decay 0.01, 10k warmup then linear decay,
batch 256 sequences, dropout 0.1, GELU, 1M steps in the paper's two phases
(`train.phases`, pretrain/training/phases.py): 90% of the steps at 128 tokens
with at most 20 masked positions, then 10% at 512 tokens with at most 80 (the
values of the original BERT README's run_pretraining commands), the batch 256
in both. One command runs both; the second phase goes on from the first's
params, optimizer state and step, on a new stream of 512-token examples. The
boundary follows train.steps (`--config.train.steps=1000` switches at 900); set
`--config.train.phases.seq512.start_step=N` to move it. Point `data` at a real
corpus:

  python -m pretrain.prepare --config=configs/bert_base.py --out=stores/wiki_books \
    --config.data.source=text --config.data.paths='corpus/*.txt'
  python -m pretrain.train --config=configs/bert_base.py --workdir=runs/bert_base \
    --config.data.source=prepared --config.data.paths=stores/wiki_books --config.mesh.fsdp=-1 --config.mesh.data=1

Expected: masked-LM accuracy ~0.7 and NSP accuracy ~0.98 at the end on
Wikipedia+BooksCorpus (the paper's corpus). On one small accelerator use
`--config.train.grad_accum_steps` to keep the paper's batch.
"""

from pretrain.families.bert.config import bert_config
from pretrain.training import phases


def get_config():
  c = bert_config()
  c.data.max_seq_length = 128  # The first phase's; each phase sets its own.
  c.data.max_predictions_per_seq = 20
  c.train.steps = 1_000_000
  c.train.batch_size = 256
  c.train.phases = phases.at_fractions(
    c,
    ("seq128", 0.0, dict(max_seq_length=128, max_predictions_per_seq=20)),
    ("seq512", 0.9, dict(max_seq_length=512, max_predictions_per_seq=80)),
  )
  c.model.dtype = "bfloat16"
  return c
