"""Toy examples: windows of the documents laid end to end (`EOT d0 EOT d1 ...`), one window per index."""

import numpy as np

from pretrain.data import streams
from pretrain.errors import PretrainError


class Windows:
  """Example i: the `seq_len + 1` stream tokens from a seed-shifted start, as inputs and next-token targets."""

  def __init__(self, docs, seq_len: int, seed: int, eot_id: int):
    self.stream = streams.doc_stream(docs, np.arange(docs.num_docs), first_sep=True)
    self.span = self.stream.length - seq_len - 1  # Window starts.
    if self.span < 1:
      raise PretrainError(f"the toy task needs more than {seq_len + 1} stream tokens")
    self.docs, self.seq_len, self.seed, self.eot_id = docs, seq_len, int(seed), eot_id

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.batch(np.asarray([index])).items()}

  def batch(self, indices) -> dict[str, np.ndarray]:
    starts = (np.asarray(indices, np.int64) * 7919 + self.seed) % self.span
    ids = self.stream.token_ids(
      starts[:, None] + np.arange(self.seq_len + 1), self.docs, self.eot_id
    )
    return {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:]}
