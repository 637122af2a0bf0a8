"""BERT attention ablation on the embedded corpus: heads (MHA, GQA, MQA) and positions (learned, RoPE, ALiBi).

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=runs/ablate_attention

Base: configs/bert_tiny.py (L4 H128 A4 pre-LN, bf16 compute, no dropout, a
4,096-piece vocabulary, 30% masking) at its earlier budget, set here so that the
sweep stays put when the demo changes: 800 steps of 16 x 128 (1,638,400 tokens
per job, MLM+NSP), lr 1e-3 after 80 warmup steps then linear decay (bert_tiny
now trains 1,200 steps at lr 2e-3); the same data order and seed for every
variant. Each variant
changes only `model.attention`, and names its position scheme (bert_tiny's own is
RoPE). Writes report.md, results.csv and loss_curves.png into the workdir;
finished jobs are skipped on a rerun, an interrupted one resumes.

Five variants, two questions, each against BERT as published (mha_learned):
does sharing key/value heads cost quality (gqa: 2 key/value heads, mqa: 1),
and does a relative position scheme learn sooner than BERT's learned table
(rope, alibi)?

Budget: the baseline must leave the unigram plateau, whose level is the
held-out cross-entropy under the corpus's unigram distribution, 6.37 nats for
this vocabulary (BENCHMARKS.md, "Demo recipes"). At this budget mha_learned ends
at eval MLM loss 5.97 (accuracy 0.107), 0.4 nats under it.

Expected, 3 seeds (eval loss, MLM + NSP, mean +- sd; paired t-test against
mha_learned): rope 5.96 +- 0.05, better (p = 0.003; MLM accuracy 0.195 against
0.107); alibi 6.19 +- 0.01, better (p = 0.0007; 0.153); mha_learned 6.66 +- 0.02;
gqa 6.66 (p = 0.74) and mqa 6.67 (p = 0.22), no significant difference. 15 jobs,
88 minutes wall beside other jobs (load average 4-12); a job is 1.6M tokens, ~3
minutes on two idle cores, ~45 minutes for the sweep. Report: BENCHMARKS.md.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/bert_tiny.py"
  c.base_overrides = dict(
    train=dict(steps=800, batch_size=16, log_every=10),
    optimizer=dict(learning_rate=1e-3, warmup_steps=80),
    eval=dict(every_steps=400, batch_size=32, num_batches=8),
    checkpoint=dict(every_steps=400, keep=1),
    metrics=dict(progress_bar=False),
  )
  c.variants = dict(
    # BERT as published: 4 query and 4 key/value heads, a learned position table.
    mha_learned=dict(model=dict(attention=dict(position="learned"))),
    gqa=dict(model=dict(attention=dict(position="learned", num_kv_heads=2))),
    mqa=dict(model=dict(attention=dict(position="learned", num_kv_heads=1))),
    rope=dict(model=dict(attention=dict(position="rope"))),
    alibi=dict(model=dict(attention=dict(position="alibi"))),
  )
  c.seeds = 3  # Jobs per variant: the report tests each variant against the baseline over them.
  c.baseline = "mha_learned"
  return c
