"""BERT attention ablation on the embedded corpus: MHA vs GQA vs MQA, learned vs RoPE vs ALiBi (and none).

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=runs/ablate_attention

Base: configs/bert_tiny.py (L4 H256 A4, bf16 compute) at batch 16 x 128 for
250 steps (512,000 tokens per variant, MLM+NSP), the same data order and seed
for every variant. Each variant changes only `model.attention`. Writes
report.md, results.csv and loss_curves.png into the workdir; finished variants
are skipped on a rerun, an interrupted one resumes.

Expected eval loss (MLM+NSP): alibi 7.13, rope_mqa 7.15, rope_gqa 7.17, rope 7.18,
none 7.23; the three variants with a learned position table (MHA, GQA, MQA)
7.418 alike: at this budget they are still on the predict-the-frequent-tokens
plateau that the table-free variants leave earlier, hence the heads comparison
repeated on RoPE. One seed each: differences of a few hundredths may not
survive another seed; raise train.steps in base_overrides for conclusions.
Full table and wall clock in BENCHMARKS.md.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/bert_tiny.py"
  c.base_overrides = dict(
    train=dict(steps=250, batch_size=16, log_every=10),
    optimizer=dict(learning_rate=1e-3, warmup_steps=10),
    eval=dict(every_steps=50, batch_size=32, num_batches=4),
    checkpoint=dict(every_steps=50, keep=1),
    metrics=dict(progress_bar=False),
  )
  c.variants = dict(
    mha_learned={},  # BERT as published: 4 query and 4 key/value heads, a learned position table.
    gqa=dict(model=dict(attention=dict(num_kv_heads=2))),
    mqa=dict(model=dict(attention=dict(num_kv_heads=1))),
    rope=dict(model=dict(attention=dict(position="rope"))),
    alibi=dict(model=dict(attention=dict(position="alibi"))),
    no_positions=dict(model=dict(attention=dict(position="none"))),
    # The heads comparison again on RoPE, which leaves the early plateau within this budget.
    rope_gqa=dict(model=dict(attention=dict(position="rope", num_kv_heads=2))),
    rope_mqa=dict(model=dict(attention=dict(position="rope", num_kv_heads=1))),
  )
  c.seeds = 3  # Jobs per variant: the report tests each variant against the baseline over them.
  c.baseline = "mha_learned"
  return c
