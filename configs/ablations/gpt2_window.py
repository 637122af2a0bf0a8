"""GPT-2 sliding-window ablation on the embedded corpus: full causal attention vs windows of 64, 32 and 16.

  python -m pretrain.ablate --config=configs/ablations/gpt2_window.py --workdir=runs/ablate_gpt2_window

Base: configs/gpt2_tiny.py (L4 H256 A4, bf16 compute, 128-token context) for
80 steps of 16 x 128 tokens, chunked, the same data order and seed for every
variant; each variant changes only `model.attention.sliding_window` (plus
RoPE for one, as sliding-window models usually pair it with rotary
positions).

Expected eval loss: window_32_rope 5.94, full 6.18, window_64 6.28, window_16
6.30, window_32 6.31 (one seed each; a smoke test of the variants at this
budget). Full table and wall clock in BENCHMARKS.md.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/gpt2_tiny.py"
  c.base_overrides = dict(
    train=dict(steps=80, log_every=10),
    eval=dict(every_steps=40, num_batches=4),
    checkpoint=dict(every_steps=40, keep=1),
    metrics=dict(progress_bar=False),
  )
  c.variants = dict(
    full={},
    window_64=dict(model=dict(attention=dict(sliding_window=64))),
    window_32=dict(model=dict(attention=dict(sliding_window=32))),
    window_16=dict(model=dict(attention=dict(sliding_window=16))),
    window_32_rope=dict(model=dict(attention=dict(sliding_window=32, position="rope"))),
  )
  c.seeds = 3  # Jobs per variant: the report tests each variant against the baseline over them.
  c.baseline = "full"
  return c
