"""A decoder-only checkpoint's next-token log-probabilities, in fixed-shape jitted batches.

What perplexity (pretrain/evaluate/perplexity.py) and the lm-evaluation-harness
adapter (pretrain/evaluate/harness.py) both need: for rows of (input ids,
target ids), the log-probability of each target after the inputs up to it, and
whether it was the model's most likely token. Rows are right-padded to a length
bucket (a power of two, at most the model's positions) and the batch to
`batch_size` rows, so a run compiles once per bucket; with causal attention the
padding after a row's tokens does not change their logits.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pretrain import families
from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.sample import load_run

_MIN_BUCKET = 16


def load_scorer(init_from: str, *, batch_size: int = 8, step: int | None = None, dtype="float32"):
  """(CausalScorer, tokenizer) of a training workdir's checkpoint or a converted folder.

  The model computes in `dtype` (float32 by default, whatever the run trained in: the params are
  float32 either way).
  """
  config, tokenizer, task, params, _ = load_run(init_from, step)
  if task.sampling != base.DECODER_ONLY:
    kind = {base.FILL_MASKS: "a masked LM", base.ENCODER_DECODER: "an encoder-decoder"}
    raise PretrainError(
      f"{init_from} is task {task.name!r} ({kind.get(task.sampling, 'not a causal LM')}): "
      "perplexity and the harness's loglikelihoods need a decoder-only (causal) language model, "
      "which predicts each token from the ones before it"
    )
  if dtype != config.model.get("dtype", "float32"):
    config.model.dtype = dtype
    task = families.get_task(config, tokenizer)
  return CausalScorer(task, params, batch_size=batch_size), tokenizer


class CausalScorer:
  """Target log-probabilities of a decoder-only task's model (`task.sampling == DECODER_ONLY`)."""

  def __init__(self, task, params, *, batch_size: int = 8):
    if task.sampling != base.DECODER_ONLY:
      raise PretrainError(f"scoring needs a decoder-only model, not task {task.name!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise PretrainError(f"batch_size={batch_size!r} must be a positive integer")
    self.model = model = task.build_model()
    self.max_length = int(model.config.max_position_embeddings)
    self.batch_size = batch_size
    self.eos = task.special.eos
    self.params = jax.device_put(params)

    @jax.jit
    def score(params, inputs, targets):  # int32 [B, L] each -> float32 [B, L], bool [B, L]
      logits = model.apply({"params": params}, inputs, deterministic=True).astype(jnp.float32)
      logp = jax.nn.log_softmax(logits, axis=-1)
      target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
      return target_logp, jnp.argmax(logits, axis=-1) == targets

    self._score = score

  def bucket(self, length: int) -> int:
    """The padded length of a row of `length` tokens."""
    if not 1 <= length <= self.max_length:
      raise PretrainError(f"a row of {length} tokens does not fit the model's {self.max_length}")
    return min(self.max_length, max(_MIN_BUCKET, 1 << (length - 1).bit_length()))

  def score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (inputs, targets) of equal lengths: (float64 log p(target_i | inputs_<=i), bool
    target_i is the argmax), each `[len(inputs)]`, in the order given."""
    out: list = [None] * len(rows)
    by_bucket: dict[int, list[int]] = {}
    for i, (inputs, targets) in enumerate(rows):
      if len(inputs) != len(targets):
        raise PretrainError(f"row {i}: {len(inputs)} inputs but {len(targets)} targets")
      by_bucket.setdefault(self.bucket(len(inputs)), []).append(i)
    for length, members in sorted(by_bucket.items()):
      for start in range(0, len(members), self.batch_size):
        chunk = members[start : start + self.batch_size]
        inputs = np.zeros([self.batch_size, length], np.int32)
        targets = np.zeros([self.batch_size, length], np.int32)
        for r, i in enumerate(chunk):
          n = len(rows[i][0])
          inputs[r, :n], targets[r, :n] = rows[i][0], rows[i][1]
        logp, greedy = jax.device_get(self._score(self.params, inputs, targets))
        for r, i in enumerate(chunk):
          n = len(rows[i][0])
          out[i] = (np.asarray(logp[r, :n], np.float64), np.asarray(greedy[r, :n], bool))
    return out
