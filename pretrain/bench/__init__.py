"""Benchmarks, one concern a module.

  python -m pretrain.bench             the training step next to HF torch and a matmul peak (step.py)
  python -m pretrain.bench.attention   each attention backend alone and in a BERT layer
  python -m pretrain.bench.data        preparing a token store, and a training process's start-up on it
  python -m pretrain.bench.loss        the vocabulary head's cross entropy, plain against chunked

timing.py (the interleaved timing harness), batches.py (full-length batches from the task's own
examples), matmul.py (the matmul peak), reference.py (the HF torch reference; each family's part is its
`hf_reference.py`), profile.py (the step's parts and its slowest XLA ops), pipeline.py (examples/s of the
input pipeline), common.py (what every CLI here shares), capability.py (the CPU's bf16 units).
Importing this package imports none of them.
"""
