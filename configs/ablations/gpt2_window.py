"""GPT-2 sliding-window ablation on the embedded corpus: full causal attention vs windows of 64, 32 and 16.

  python -m pretrain.ablate --config=configs/ablations/gpt2_window.py --workdir=runs/ablate_gpt2_window

Base: configs/gpt2_tiny.py (L4 H256 A4, bf16 compute, 128-token context) for
80 steps of 16 x 128 tokens, chunked, the same data order and seed for every
variant; each variant changes only `model.attention.sliding_window` (plus
RoPE for one, as sliding-window models usually pair it with rotary
positions).

Budget: lr 1e-3 after 10 warmup steps, cosine decay to 1e-4 (set here, not
inherited, so the sweep stays put when the demo changes), ~1 minute a job on
two idle cores. The baseline leaves the unigram plateau well within it: the
held-out cross-entropy of the corpus under its own unigram distribution is
6.60 nats for this 8,192-piece vocabulary ("Demo recipes" in
BENCHMARKS.md says how it is computed), and full attention ends at eval loss
6.26 (mean of 3 seeds), 0.34 nats under it.

Expected, 3 seeds (eval loss mean +- sd; paired t-test against full): window_32_rope
6.00 +- 0.05, better (p = 0.005); full 6.26 +- 0.07; window_64 6.29, no significant
difference (p = 0.50); window_32 6.30 (p = 0.015) and window_16 6.33 (p = 0.048),
worse. 15 jobs, 40 minutes wall beside other jobs (load average 5-12; ~15 minutes on
idle cores). Report and wall clock: BENCHMARKS.md.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/gpt2_tiny.py"
  c.base_overrides = dict(
    train=dict(steps=80, batch_size=16, log_every=10),
    optimizer=dict(learning_rate=1e-3, warmup_steps=10, end_learning_rate=1e-4),
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
