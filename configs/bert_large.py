"""BERT-large pretraining as published (Devlin et al. 2018).

L24 H1024 A16, 336,226,108 parameters with a 30,522-piece vocabulary; the
same recipe as configs/bert_base.py (AdamW lr 1e-4, 10k warmup, linear decay,
batch 256 x 512, dropout 0.1).

  python -m pretrain.prepare --config=configs/bert_large.py --out=stores/wiki_books \
    --config.data.source=text --config.data.paths='corpus/*.txt'
  python -m pretrain.train --config=configs/bert_large.py --workdir=runs/bert_large \
    --config.data.source=prepared --config.data.paths=stores/wiki_books --config.mesh.fsdp=-1 --config.mesh.data=1

Expected on the paper's corpus: masked-LM accuracy a few points above base.
For large-batch training switch to LAMB: `--config.optimizer.name=lamb`.
"""

from pretrain.families.bert.config import bert_config


def get_config():
  c = bert_config()
  c.model.hidden_size = 1024
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.intermediate_size = 4096
  c.model.dtype = "bfloat16"
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  return c
