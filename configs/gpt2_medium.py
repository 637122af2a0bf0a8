"""GPT-2 medium (355M) pretraining as published (Radford et al. 2019).

L24 H1024 A16, 354,823,168 parameters (the paper's table says 345M); the
recipe of configs/gpt2_small.py (vocabulary 50,257, context 1,024, batch 512,
AdamW betas (0.9, 0.95), weight decay 0.1, 2,000 warmup steps, cosine decay
over 600k steps) with GPT-3's peak learning rate for this shape, 3e-4, decaying
to 3e-5 (Brown et al. 2020, Table 2.1; GPT-2 does not publish its own).

  python -m pretrain.prepare --config=configs/gpt2_medium.py --out=stores/openwebtext \
    --config.data.source=jsonl --config.data.paths='openwebtext/*.jsonl'
  python -m pretrain.train --config=configs/gpt2_medium.py --workdir=runs/gpt2_medium \
    --config.data.source=prepared --config.data.paths=stores/openwebtext \
    --config.mesh.fsdp=-1 --config.mesh.data=1

Needs a 50,257-piece tokenizer, as configs/gpt2_small.py explains.

Expected: on OpenWebText the OpenAI checkpoint scores a validation loss of
2.84 per GPT-2 token (nanoGPT's evaluation); the paper reports zero-shot
WikiText-103 perplexity 26.37.
"""

from pretrain.families.gpt2.config import gpt2_config


def get_config():
  c = gpt2_config()
  c.model.update(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)
  c.optimizer.update(learning_rate=3e-4, end_learning_rate=3e-5)
  return c
