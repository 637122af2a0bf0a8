"""Plan before you pay: the run's own train step compiled ahead of time for a TPU slice or a GPU cluster.

  python -m pretrain.plan --config=configs/bert_base.py --target=tpu:v5p-128 [--json_out=F] [--search]

targets.py names the targets and holds the per-chip figures (with their sources); compile.py builds
the step as pretrain.train does and compiles it for the target's compile-only devices (memory,
FLOPs); isolate.py runs each compile in a child process (a compiler crash is one refused plan);
phased.py plans a run in phases (train.phases) phase by phase; collectives.py reads the
collectives and their bytes from the compiled HLO; roofline.py turns it all into a predicted step
time, tokens/s and MFU; search.py searches remat x microbatches x mesh split; report.py prints a
plan. Needs the `aot` extra (jax[tpu], jax[cuda12-local]).
"""
