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

import os

from pretrain.ablate import load_config_file


def get_config():
  """configs/bert_base.py (its recipe and two phases) with BERT-large's shape."""
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_base.py"))
  c.model.update(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)
  return c
