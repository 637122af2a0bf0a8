"""T5 v1.1 Large pretraining: span corruption (Raffel et al. 2020, v1.1 changes).

Hidden size 1024, intermediate size 2816 (gated GELU), 16 heads of 64,
24 + 24 layers, vocabulary 32,128: 783,150,080 parameters, as google/t5-v1_1-large. The
recipe of configs/t5_small.py (Adafactor, rsqrt schedule at 1e-2 for 10k
steps, inputs 512 / targets 114, dropout 0, batch 128 for 2**19 steps; the
paper's final models: batch 2048 for 1M steps). Scanned layers keep compile
time flat in depth.

  python -m pretrain.prepare --config=configs/t5_large.py --out=stores/c4 \
    --config.data.source=jsonl --config.data.paths='c4/*.jsonl' \
    --config.tokenizer.path=spm32000.model
  python -m pretrain.train --config=configs/t5_large.py --workdir=runs/t5_large \
    --config.data.source=prepared --config.data.paths=stores/c4 --config.mesh.fsdp=-1 --config.mesh.data=1

Expected: 783,150,080 parameters, 81,408 tokens and 1.88e14 model FLOPs per
step (9.9e19 for the run); the loss starts near 11 and falls; no public per-step loss
curve, so evaluate by fine-tuning.
"""

from pretrain.families.t5.config import t5_config


def get_config():
  c = t5_config()
  c.model.update(
    hidden_size=1024,
    intermediate_size=2816,
    head_dim=64,
    num_heads=16,
    num_layers=24,
    num_decoder_layers=24,
    scan_layers=True,
  )
  c.data.update(inputs_length=512, targets_length=114)
  return c
