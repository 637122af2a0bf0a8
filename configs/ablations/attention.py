"""BERT attention ablation on the embedded corpus: heads (MHA, GQA, MQA) and positions (learned, RoPE, ALiBi).

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=runs/ablate_attention

Base: configs/bert_tiny.py (L4 H128 A4 pre-LN, bf16 compute, no dropout, a
4,096-piece vocabulary) at its own budget, repeated here: 400 steps of 32 x
128 (1,638,400 tokens per job, MLM+NSP), lr 1e-3 after 40 warmup steps then
linear decay; the same data order and seed for every variant. Each variant changes only `model.attention`.
Writes report.md, results.csv and loss_curves.png into the workdir; finished
jobs are skipped on a rerun, an interrupted one resumes.

Five variants, two questions, each against BERT as published (mha_learned):
does sharing key/value heads cost quality (gqa: 2 key/value heads, mqa: 1),
and does a relative position scheme learn sooner than BERT's learned table
(rope, alibi)? The sweep used to carry no_positions and the heads comparison
repeated on RoPE; they answer neither question and each costs a job per seed.

Budget: the baseline must leave the unigram plateau, whose level is the
held-out cross-entropy under the corpus's unigram distribution, 6.37 nats for
this vocabulary (BENCHMARKS.md, "Demo recipes"). Measured for mha_learned (one
seed, a shared 2-core machine): at 200 steps (lr 1e-3, 20 warmup) eval MLM
loss 6.365, accuracy 0.058, on the plateau's edge (rope there: 6.279,
0.072); at these 400 steps 6.18 and 0.079 (the bert_tiny quick-start run:
the same job). A job is 1.6M tokens,
~3 minutes on two idle cores (bert_tiny's ~11,000 tokens/s there), ~15
minutes a seed for the five variants: more than a minute a job, but a shorter
budget leaves the baseline on the plateau, where every learned-table variant
scores alike.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/bert_tiny.py"
  c.base_overrides = dict(
    train=dict(steps=400, batch_size=32, log_every=10),
    optimizer=dict(learning_rate=1e-3, warmup_steps=40),
    eval=dict(every_steps=200, batch_size=32, num_batches=8),
    checkpoint=dict(every_steps=200, keep=1),
    metrics=dict(progress_bar=False),
  )
  c.variants = dict(
    mha_learned={},  # BERT as published: 4 query and 4 key/value heads, a learned position table.
    gqa=dict(model=dict(attention=dict(num_kv_heads=2))),
    mqa=dict(model=dict(attention=dict(num_kv_heads=1))),
    rope=dict(model=dict(attention=dict(position="rope"))),
    alibi=dict(model=dict(attention=dict(position="alibi"))),
  )
  c.seeds = 3  # Jobs per variant: the report tests each variant against the baseline over them.
  c.baseline = "mha_learned"
  return c
