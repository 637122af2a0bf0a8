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
from pretrain.config import base_config


def get_config():
  c = base_config()
  c.task.name = "roberta"
  c.tokenizer.update(vocab_size=50265, model_type="bpe")
  c.model.update(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, dtype="bfloat16")
  c.model.position_offset = 2  # Positions 2..513 for 512 tokens; row 1 is padding's (HF's padding_idx).
  c.model.pooler = False
  c.model.nsp_head = False
  c.data.update(max_seq_length=512, max_predictions_per_seq=80, next_sentence_prediction=False)
  c.optimizer.update(learning_rate=6e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, warmup_steps=24_000,
                     decay="linear", grad_clip_norm=0.0)
  c.train.update(steps=500_000, batch_size=8192)
  return c
