"""T5 fine-tuning as text-to-text (Raffel et al. 2020): labels are words, scored by the generated text.

Inputs are `<task> sentence: <text>` (pairs: `<task> sentence1: <a> sentence2: <b>`)
followed by EOS; targets are the label's word (tasks/glue.py gives T5's words:
"negative"/"positive", "entailment"/"not_entailment", ...; other tasks their
label names) followed by EOS, and for regression the value rounded to the
nearest 0.2 and written with one decimal (T5's STS-B format). Training is
token-level cross entropy on the targets. Evaluation decodes greedily (argmax at
each of `finetune.t5_targets_length` steps, each a whole decoder pass; labels are
a few tokens) and compares the generated text with the label words: a text that
is no label word counts as wrong (class -1); a regression output that does not
parse as a number counts as -1, as T5's string_to_float does.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.t5 import model as t5_model
from pretrain.families.t5 import task as t5_family
from pretrain.finetune import tasks as tasks_lib
from pretrain.finetune.task import check_finetune_fields, EpochExamples
from pretrain.objectives.losses import cross_entropy


def _regression_word(value: float) -> str:
  return f"{round(float(value) * 5) / 5:.1f}"


class TextToTextTask(base.Task):
  name = "finetune_t5"
  layer_stacks = {"block": "block"}

  def __init__(self, config, tokenizer, dataset: tasks_lib.Dataset):
    family = t5_family.T5Task(config, tokenizer)  # The model config and special ids, checked.
    self.family = family  # Its model and model inputs are the fine-tuning ones.
    self.model_config = family.model_config
    self.special = tokenizer.special
    self.special.require("T5 fine-tuning", "pad", "eos")
    self.tokenizer = tokenizer
    self.dataset = dataset
    self.kind = dataset.kind
    self.prefix = config.finetune.t5_prefix or dataset.name
    self.inputs_length = int(config.finetune.max_seq_length)
    self.targets_length = int(config.finetune.t5_targets_length)
    self.words = dataset.target_words
    if self.kind == tasks_lib.CLASSIFICATION:
      encoded = tokenizer.encode(list(self.words))
      for word, ids in zip(self.words, encoded):
        if not ids or len(ids) + 1 > self.targets_length:
          raise PretrainError(
            f"label word {word!r} is {len(ids)} tokens with the tokenizer {tokenizer.path}; "
            f"finetune.t5_targets_length={self.targets_length} must hold it and EOS"
          )
        if self.tokenizer.decode(ids).strip() != word:
          raise PretrainError(
            f"the tokenizer {tokenizer.path} does not give back label word {word!r} "
            f"(it decodes as {self.tokenizer.decode(ids)!r}): the generated text could not be scored"
          )

  def _inputs(self, split: tasks_lib.Split) -> list[str]:
    names = ("sentence",) if len(split.texts) == 1 else ("sentence1", "sentence2")
    return [
      " ".join([self.prefix, *(f"{n}: {t}" for n, t in zip(names, texts))])
      for texts in zip(*split.texts)
    ]

  def _targets(self, split: tasks_lib.Split) -> list[str]:
    if self.kind == tasks_lib.REGRESSION:
      return [_regression_word(v) for v in split.labels]
    return [self.words[int(i)] for i in split.labels]

  def encode(self, split: tasks_lib.Split) -> dict[str, np.ndarray]:
    pad, eos = self.special.pad, self.special.eos
    n, li, lt = len(split), self.inputs_length, self.targets_length
    out = {
      "encoder_input_tokens": np.full([n, li], pad, np.int32),
      "encoder_input_mask": np.zeros([n, li], np.int32),
      "decoder_input_tokens": np.full([n, lt], pad, np.int32),
      "decoder_target_tokens": np.full([n, lt], pad, np.int32),
      "decoder_loss_weights": np.zeros([n, lt], np.float32),
      "labels": split.labels,
      "weights": np.ones([n], np.float32),
    }
    for i, (x, y) in enumerate(
      zip(self.tokenizer.encode(self._inputs(split)), self.tokenizer.encode(self._targets(split)))
    ):
      x, y = x[: li - 1] + [eos], y[: lt - 1] + [eos]
      out["encoder_input_tokens"][i, : len(x)] = x
      out["encoder_input_mask"][i, : len(x)] = 1
      out["decoder_target_tokens"][i, : len(y)] = y
      out["decoder_input_tokens"][i, 1 : len(y)] = y[:-1]  # Starts with pad, T5's start id.
      out["decoder_loss_weights"][i, : len(y)] = 1
    return out

  def examples(self, docs, seed: int):
    return EpochExamples(docs if isinstance(docs, dict) else self.encode(docs), seed)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    li, lt = self.inputs_length, self.targets_length
    label_dtype = np.float32 if self.kind == tasks_lib.REGRESSION else np.int32
    return {
      "encoder_input_tokens": np.zeros([batch_size, li], np.int32),
      "encoder_input_mask": np.zeros([batch_size, li], np.int32),
      "decoder_input_tokens": np.zeros([batch_size, lt], np.int32),
      "decoder_target_tokens": np.zeros([batch_size, lt], np.int32),
      "decoder_loss_weights": np.zeros([batch_size, lt], np.float32),
      "labels": np.zeros([batch_size], label_dtype),
      "weights": np.zeros([batch_size], np.float32),
    }

  @property
  def tokens_per_example(self) -> int:
    return self.inputs_length + self.targets_length

  def build_model(self):
    return self.family.build_model()

  def init_args(self, batch):
    return self.family.init_args(batch)

  def denominators(self, batch) -> dict:
    w = batch["decoder_loss_weights"] * batch["weights"][:, None]
    return {"tokens": jnp.maximum(jnp.sum(w), 1.0)}

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits = model.apply(
      {"params": params}, *self.init_args(batch), deterministic=deterministic, rngs=rngs
    )
    w = batch["decoder_loss_weights"] * batch["weights"][:, None]
    nll, correct, _ = cross_entropy(logits, batch["decoder_target_tokens"])
    sums = {"loss_sum": jnp.sum(nll * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}
    return sums["loss_sum"] / denominators["tokens"], sums

  @staticmethod
  def finalize(sums) -> dict:
    count = sums["count"] + 1e-9
    return {"loss": sums["loss_sum"] / count, "token_accuracy": sums["correct"] / count}

  def predict(self, model, params, batch):
    """Greedy decoding: int32 [batch, targets_length] generated tokens (pad after EOS)."""
    variables = {"params": params}
    tokens, mask = batch["encoder_input_tokens"], batch["encoder_input_mask"]
    encoded = model.apply(variables, tokens, mask, method=t5_model.T5Model.encode)
    b, lt = tokens.shape[0], self.targets_length
    pad, eos = self.special.pad, self.special.eos
    decoder_inputs = jnp.full([b, lt], pad, jnp.int32)
    generated = jnp.full([b, lt], pad, jnp.int32)
    done = jnp.zeros([b], bool)
    for t in range(lt):
      logits = model.apply(variables, encoded, mask, decoder_inputs, method=t5_model.T5Model.decode)
      token = jnp.where(done, pad, jnp.argmax(logits[:, t], axis=-1).astype(jnp.int32))
      generated = generated.at[:, t].set(token)
      done = done | (token == eos)
      if t + 1 < lt:
        decoder_inputs = decoder_inputs.at[:, t + 1].set(token)
    return generated

  def texts(self, outputs: np.ndarray) -> list[str]:
    """The generated texts: tokens up to EOS, ids above the tokenizer's pieces (sentinels) left out."""
    out = []
    for row in np.asarray(outputs):
      ids = [int(i) for i in row]
      if self.special.eos in ids:
        ids = ids[: ids.index(self.special.eos)]
      ids = [i for i in ids if i != self.special.pad and i < self.tokenizer.vocab_size]
      out.append(self.tokenizer.decode(ids).strip())
    return out

  def predictions(self, outputs: np.ndarray) -> np.ndarray:
    texts = self.texts(outputs)
    if self.kind == tasks_lib.REGRESSION:
      values = []
      for text in texts:
        try:
          values.append(float(text))
        except ValueError:
          values.append(-1.0)
      return np.asarray(values, np.float32)
    index = {w: i for i, w in enumerate(self.words)}
    return np.asarray([index.get(t, -1) for t in texts], np.int32)

  def train_flops_per_example(self) -> float:
    return 3.0 * t5_model.forward_flops_per_example(
      self.model_config, self.inputs_length, self.targets_length
    )

  def describe(self) -> dict:
    return {
      "model": dataclasses.asdict(self.model_config),
      "prefix": self.prefix,
      "words": list(self.words),
      "inputs_length": self.inputs_length,
      "targets_length": self.targets_length,
    }

  def check_resume(self, config, saved: dict) -> None:
    super().check_resume(config, saved)
    check_finetune_fields(config, saved)
