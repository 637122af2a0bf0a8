"""GPT-2 small (124M) pretraining as published (Radford et al. 2019).

L12 H768 A12, 124,439,808 parameters (the released checkpoint's count; the
paper's table says 117M) with a 50,257-piece vocabulary and a 1,024-token
context, batch 512 sequences (both from the paper), dropout 0.1.

The paper does not give its optimizer settings. This is the recipe commonly
used to reproduce GPT-2 (nanoGPT's GPT-2 config, itself GPT-3's recipe for the
same 125M shape, Brown et al. 2020): AdamW lr 6e-4, betas (0.9, 0.95), eps
1e-8, weight decay 0.1, gradient clipping 1.0, 2,000 warmup steps, cosine decay
to 6e-5 at 600k steps (600k x 512 x 1,024 = 315B tokens).

The tokenizer is a sentencepiece BPE model with exactly 50,257 pieces: point
data at a real corpus (WebText was 40 GB; OpenWebText is the usual stand-in);
preparing the store trains it once on a sample of the corpus and keeps it in
the store, then train the model:

  python -m pretrain.prepare --config=configs/gpt2_small.py --out=stores/openwebtext \
    --config.data.source=jsonl --config.data.paths='openwebtext/*.jsonl'
  python -m pretrain.train --config=configs/gpt2_small.py --workdir=runs/gpt2_small \
    --config.data.source=prepared --config.data.paths=stores/openwebtext

(or give a 50,257-piece model with --config.tokenizer.path). On the embedded
demo corpus sentencepiece cannot find that many pieces and the run stops with
that message. On one accelerator keep the batch with
`--config.train.grad_accum_steps`; across several, shard the state with
`--config.mesh.fsdp=-1 --config.mesh.data=1`.

Expected: nanoGPT's run of this recipe on OpenWebText reaches a validation
loss of ~2.85 per GPT-2 token (the OpenAI checkpoint scores 3.12 there, having
been trained on WebText); with this project's tokenizer the per-token figure
moves with the vocabulary. The paper reports the 124M model's zero-shot
WikiText-103 perplexity as 37.50.
"""

from pretrain.families.gpt2.config import gpt2_config


def get_config():
  return gpt2_config()  # GPT-2 small is the GPT-2 base.
