"""T5 v1.1 Base pretraining: span corruption (Raffel et al. 2020, v1.1 changes).

Hidden size 768, intermediate size 2048 (gated GELU), 12 heads of 64,
12 + 12 layers, vocabulary 32,128: 247,577,856 parameters, as
google/t5-v1_1-base. The recipe of
configs/t5_small.py (Adafactor, rsqrt schedule at 1e-2 for 10k steps, inputs
512 / targets 114, dropout 0, batch 128 for 2**19 steps; the paper's final
models: batch 2048 for 1M steps).

  python -m pretrain.prepare --config=configs/t5_base.py --out=stores/c4 \
    --config.data.source=jsonl --config.data.paths='c4/*.jsonl' \
    --config.tokenizer.path=spm32000.model
  python -m pretrain.train --config=configs/t5_base.py --workdir=runs/t5_base \
    --config.data.source=prepared --config.data.paths=stores/c4 --config.mesh.fsdp=-1 --config.mesh.data=1

Expected: 247,577,856 parameters, 81,408 tokens and 5.45e13 model FLOPs per
step (2.9e19 for the run); the loss starts near 11 and falls; no public per-step loss
curve, so evaluate by fine-tuning.
"""

from pretrain.families.t5.config import t5_config


def get_config():
  c = t5_config()
  c.model.update(
    hidden_size=768,
    intermediate_size=2048,
    head_dim=64,
    num_heads=12,
    num_layers=12,
    num_decoder_layers=12,
  )
  c.data.update(inputs_length=512, targets_length=114)
  return c
