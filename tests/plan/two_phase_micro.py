"""A micro BERT in two phases (16 then 32 tokens), as configs/bert_base.py's 128 then 512.

  python -m pretrain.plan --config=tests/plan/two_phase_micro.py --target=tpu:v5e-4

Its first phase is half the second's sequence; the second's length and batch can be raised from the
command line (--config.train.phases.seq32.train.batch_size=N) to make that phase alone too big.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from plan_micro import micro_config  # noqa: E402  (this file is loaded by path, as a config file)

from pretrain.training import phases  # noqa: E402


def get_config():
  c = micro_config("bert")
  c.data.update(max_seq_length=16, max_predictions_per_seq=2)
  c.model.max_position_embeddings = 4096
  c.train.phases = phases.at_fractions(
    c,
    ("seq16", 0.0, dict(max_seq_length=16, max_predictions_per_seq=2)),
    ("seq32", 0.5, dict(max_seq_length=32, max_predictions_per_seq=4)),
  )
  c.train.phases.seq32.train = dict(batch_size=8)  # A phase may set its own batch.
  return c
