"""T5 v1.1 Small pretraining: span corruption on C4-style text (Raffel et al. 2020, v1.1 changes).

Hidden size 512, intermediate size 1024 (gated GELU), 6 heads of 64, 8 + 8
layers, vocabulary 32,128 (32,000 sentencepiece pieces + 100 sentinels,
padded to a multiple of 128): 76,961,152 parameters, as google/t5-v1_1-small. Recipe (see
pretrain.families.t5.config.t5_config for sources): Adafactor, lr 1/sqrt(max(step, 10k))
(1e-2 for the first 10k steps), inputs 512 / targets 114 (568 raw tokens per
example), dropout 0, z-loss 1e-4, batch 128 for 2**19 steps as in the paper's
pretraining (section 3.1.2). The released v1.1 checkpoints are at step 1M; the
paper's final models used batch 2048 for 1M steps (section 3.7):
`--config.train.batch_size=2048 --config.train.steps=1000000`.

  python -m pretrain.prepare --config=configs/t5_small.py --out=stores/c4 \
    --config.data.source=jsonl --config.data.paths='c4/*.jsonl' \
    --config.tokenizer.path=spm32000.model
  python -m pretrain.train --config=configs/t5_small.py --workdir=runs/t5_small \
    --config.data.source=prepared --config.data.paths=stores/c4

Expected: the log reports 76,961,152 parameters and 81,408 tokens per step
(128 x (512 + 114)); model FLOPs 1.36e13 per step (7.1e18 for the run). The
loss starts near 11 (ln 32,128 = 10.4, plus the spread of the initial logits) and falls; there is no
published per-step loss curve for T5.1.1, so judge a run by fine-tuning, as
the paper does.
"""

from pretrain.families.t5.config import t5_config


def get_config():
  c = t5_config()
  c.model.update(
    hidden_size=512,
    intermediate_size=1024,
    head_dim=64,
    num_heads=6,
    num_layers=8,
    num_decoder_layers=8,
  )
  c.data.update(inputs_length=512, targets_length=114)
  return c
