"""GPT-2 XL (1.5B) pretraining as published (Radford et al. 2019).

L48 H1600 A25, 1,557,611,200 parameters (the paper's table says 1542M); the
recipe of configs/gpt2_small.py (vocabulary 50,257, context 1,024, batch 512,
AdamW betas (0.9, 0.95), weight decay 0.1, 2,000 warmup steps, cosine decay
over 600k steps) with GPT-3's peak learning rate for its 1.3B model, 2e-4,
decaying to 2e-5 (Brown et al. 2020, Table 2.1).

Layers are scanned and fully rematerialized (without remat the float32
attention scores alone of one 1,024-token sequence take 48 x 25 x 1024^2 x 4
bytes = 5 GB). Parameters, gradients and AdamW state take 25 GB in float32:
shard them over the devices with FSDP.

  python -m pretrain.prepare --config=configs/gpt2_xl.py --out=stores/openwebtext \
    --config.data.source=jsonl --config.data.paths='openwebtext/*.jsonl'
  python -m pretrain.train --config=configs/gpt2_xl.py --workdir=runs/gpt2_xl \
    --config.data.source=prepared --config.data.paths=stores/openwebtext \
    --config.mesh.fsdp=-1 --config.mesh.data=1

Needs a 50,257-piece tokenizer, as configs/gpt2_small.py explains.

Expected: on OpenWebText the OpenAI checkpoint scores a validation loss of
about 2.54 per GPT-2 token (nanoGPT's evaluation); the paper reports zero-shot
WikiText-103 perplexity 17.48.
"""

from pretrain.families.gpt2.config import gpt2_config


def get_config():
  c = gpt2_config()
  c.model.update(
    hidden_size=1600,
    num_layers=48,
    num_heads=25,
    intermediate_size=6400,
    scan_layers=True,
    remat_policy="full",
  )
  c.optimizer.update(learning_rate=2e-4, end_learning_rate=2e-5)
  return c
