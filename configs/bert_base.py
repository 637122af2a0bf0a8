"""BERT-base pretraining as published (Devlin et al. 2018).

L12 H768 A12, 110,106,428 parameters with a 30,522-piece vocabulary; AdamW
lr 1e-4, betas (0.9, 0.999), weight decay 0.01, 10k warmup then linear decay,
batch 256 x 512 tokens, dropout 0.1, GELU. The paper trains 1M steps (90% at
seq 128, then 10% at 512); point `data` at a real corpus:

  python -m pretrain.prepare --config=configs/bert_base.py --out=stores/wiki_books \
    --config.data.source=text --config.data.paths='corpus/*.txt'
  python -m pretrain.train --config=configs/bert_base.py --workdir=runs/bert_base \
    --config.data.source=prepared --config.data.paths=stores/wiki_books --config.mesh.fsdp=-1 --config.mesh.data=1

Expected: masked-LM accuracy ~0.7 and NSP accuracy ~0.98 at the end on
Wikipedia+BooksCorpus (the paper's corpus). On one small accelerator use
`--config.train.grad_accum_steps` to keep the paper's batch.
"""

from pretrain.families.bert.config import bert_config


def get_config():
  c = bert_config()
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  c.train.steps = 1_000_000
  c.train.batch_size = 256
  c.model.dtype = "bfloat16"
  return c
