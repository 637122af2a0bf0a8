"""RoBERTa-base pretraining as published (Liu et al. 2019, Table 9).

BERT-base's network without the pooler and NSP head, one token type, 514
position rows (positions count from 2, as HF's RoBERTa), LayerNorm eps 1e-5:
124,697,433 parameters with a 50,265-piece vocabulary. Masked LM only, on
FULL-SENTENCES inputs of up to 512 tokens with dynamic masking. Table 9's
pretraining hyperparameters: AdamW lr 6e-4, betas (0.9, 0.98), eps 1e-6,
weight decay 0.01, 24k warmup steps then linear decay, 500k steps of batch 8k
sequences, dropout 0.1 (attention too), no gradient clipping.

  python -m pretrain.prepare --config=configs/roberta_base.py --out=stores/wiki_books \
    --config.data.source=text --config.data.paths='corpus/*.txt'
  python -m pretrain.train --config=configs/roberta_base.py --workdir=runs/roberta_base \
    --config.data.source=prepared --config.data.paths=stores/wiki_books --config.mesh.fsdp=-1 --config.mesh.data=1

Deviation: RoBERTa's vocabulary is GPT-2's byte-level BPE; here it is a
sentencepiece BPE of 50,265 pieces trained on the configured corpus (ids 0-4
are [PAD] [UNK] [CLS] [SEP] [MASK]). The embedded corpus is too small for that
many pieces: point `data` at a real corpus. On few accelerators keep the batch
with `--config.train.grad_accum_steps`.
"""

from pretrain.families.roberta.config import roberta_config


def get_config():
  c = (
    roberta_config()
  )  # Positions 2..513 for 512 tokens (position_offset 2); row 1 is padding's (HF's padding_idx).
  c.model.dtype = "bfloat16"
  return c
