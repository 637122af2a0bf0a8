"""BERT-large pretraining as published (Devlin et al. 2018).

L24 H1024 A16, 336,226,108 parameters with a 30,522-piece vocabulary; the
same recipe as configs/bert_base.py (AdamW lr 1e-4, 10k warmup, linear decay,
batch 256, dropout 0.1, 1M steps: 90% at 128 tokens, then 10% at 512, in one command).

  python -m pretrain.prepare --config=configs/bert_large.py --out=stores/wiki_books \
    --config.data.source=text --config.data.paths='corpus/*.txt'
  python -m pretrain.train --config=configs/bert_large.py --workdir=runs/bert_large \
    --config.data.source=prepared --config.data.paths=stores/wiki_books --config.mesh.fsdp=-1 --config.mesh.data=1

Expected on the paper's corpus: masked-LM accuracy a few points above base.
For large-batch training switch to LAMB: `--config.optimizer.name=lamb`.
"""

from pretrain.families.bert.config import bert_config
from pretrain.training import phases


def get_config():
  c = bert_config()
  c.model.hidden_size = 1024
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.intermediate_size = 4096
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 128  # The first phase's; each phase sets its own.
  c.data.max_predictions_per_seq = 20
  c.train.steps = 1_000_000
  c.train.batch_size = 256
  c.train.phases = phases.at_fractions(
    c,
    ("seq128", 0.0, dict(max_seq_length=128, max_predictions_per_seq=20)),
    ("seq512", 0.9, dict(max_seq_length=512, max_predictions_per_seq=80)),
  )
  return c
