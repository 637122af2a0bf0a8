"""BERT attention ablation on the embedded corpus: MHA vs GQA vs MQA, learned vs RoPE vs ALiBi (and none).

  python -m pretrain.ablate --config=configs/ablations/attention.py --workdir=runs/ablate_attention

Base: configs/bert_tiny.py (L4 H256 A4, bf16 compute) at batch 16 x 128 for
100 steps (204,800 tokens per variant, MLM+NSP), the same data order and seed
for every variant. Each variant changes only `model.attention`. Writes
report.md, results.csv and loss_curves.png into the workdir; finished variants
are skipped on a rerun, an interrupted one resumes.

Each variant runs 1.5-2 minutes on two CPU cores, the sweep ~12 minutes; the
figures of one run are in BENCHMARKS.md. At this budget differences in eval
loss of a few hundredths are within run-to-run noise of the data order; treat
the sweep as a smoke test of the variants and a template for real budgets.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.base = "configs/bert_tiny.py"
  c.base_overrides = dict(
      train=dict(steps=100, batch_size=16, log_every=10),
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
  )
  return c
