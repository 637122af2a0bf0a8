"""GPT-2 large (774M) pretraining as published (Radford et al. 2019).

L36 H1280 A20, 774,030,080 parameters (the paper's table says 762M); the
recipe of configs/gpt2_small.py (vocabulary 50,257, context 1,024, batch 512,
AdamW betas (0.9, 0.95), weight decay 0.1, 2,000 warmup steps, cosine decay
over 600k steps) with GPT-3's peak learning rate for this size, 2.5e-4,
decaying to 2.5e-5 (Brown et al. 2020, Table 2.1).

Layers are scanned (one compiled block instead of 36) and fully
rematerialized: without remat the float32 attention scores alone of one
1,024-token sequence take 36 x 20 x 1024^2 x 4 bytes = 3 GB for the backward
pass; with it each block keeps only its input.

  python -m pretrain.prepare --config=configs/gpt2_large.py --out=stores/openwebtext \
    --config.data.source=jsonl --config.data.paths='openwebtext/*.jsonl'
  python -m pretrain.train --config=configs/gpt2_large.py --workdir=runs/gpt2_large \
    --config.data.source=prepared --config.data.paths=stores/openwebtext \
    --config.mesh.fsdp=-1 --config.mesh.data=1

Needs a 50,257-piece tokenizer, as configs/gpt2_small.py explains.

Expected: on OpenWebText the OpenAI checkpoint scores a validation loss of
about 2.67 per GPT-2 token (nanoGPT's evaluation); the paper reports zero-shot
WikiText-103 perplexity 22.05.
"""

from pretrain.families.gpt2.config import gpt2_config


def get_config():
  c = gpt2_config()
  c.model.update(
    hidden_size=1280,
    num_layers=36,
    num_heads=20,
    intermediate_size=5120,
    scan_layers=True,
    remat_policy="full",
  )
  c.optimizer.update(learning_rate=2.5e-4, end_learning_rate=2.5e-5)
  return c
