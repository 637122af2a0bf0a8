"""Fine-tuning as a Task the train loop runs: labelled examples -> encoder + head -> loss, predictions.

`ClassifierTask` is a pretrain.families.base.Task (the loop's step, FLOPs and
resume checks use it as they use a pretraining task) plus what evaluation on a
whole dev split needs: `eval_batches` of every dev example (the last batch
padded with rows of weight 0) and `predict` (the jitted forward's logits) ->
`predictions` (classes, or regression values) that the metrics read.

Inputs as the family's HF tokenizer builds them: BERT `[CLS] a [SEP] b [SEP]`
with token types 0 then 1; RoBERTa `<s> a </s></s> b </s>` with one token
type. A pair longer than data budget is cut longest-first (BERT's
_truncate_seq_pair). Training examples are epochs of the train split, each
in its own order seeded by (seed, epoch): global example i is example
perm_{i // N}[i % N], so the loop's data position resumes them exactly.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.bert import model as bert_model
from pretrain.finetune import heads
from pretrain.finetune import tasks as tasks_lib
from pretrain.objectives.losses import cross_entropy

# Fields of the finetune section that define what a checkpoint was trained on: a resumed run must keep them.
FIXED_FIELDS = ("task", "max_seq_length", "labels", "text_fields", "label_field", "kind")


def check_finetune_fields(config, saved: dict) -> None:
  """A checkpoint resumes only on the task, labels and inputs it was fine-tuned on."""
  before = saved.get("finetune") or {}
  for key in FIXED_FIELDS:
    if key in before and before[key] != config.finetune.get(key):
      raise PretrainError(
        f"config finetune.{key} is {config.finetune.get(key)!r} but the checkpoint was "
        f"fine-tuned with {before[key]!r}; use a new workdir for another task"
      )


def _truncate(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Removes tokens from the end of the longer of a, b until both fit `budget` (BERT's rule)."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    (a if len(a) > len(b) else b).pop()
  return a, b


def encode(
  split: tasks_lib.Split, tokenizer, max_len: int, head: str, *, with_types: bool = True
) -> dict[str, np.ndarray]:
  """A split's examples as fixed-length arrays (input_ids, input_mask, segment_ids, labels, weights)."""
  special = tokenizer.special
  special.require("sequence classification", "cls", "sep", "pad")
  cls, sep, pad = special.cls, special.sep, special.pad
  columns = [tokenizer.encode(list(texts)) for texts in split.texts]
  pair = len(columns) == 2
  middle = [sep, sep] if head == heads.FIRST_TOKEN else [sep]  # RoBERTa separates pairs with two.
  budget = max_len - 2 - (len(middle) if pair else 0)
  if budget < 2:
    raise PretrainError(f"finetune.max_seq_length={max_len} leaves no room for text")
  n = len(split)
  ids = np.full([n, max_len], pad, np.int32)
  types = np.zeros([n, max_len], np.int32)
  mask = np.zeros([n, max_len], np.int32)
  for i in range(n):
    a, b = _truncate(columns[0][i], columns[1][i] if pair else [], budget)
    first = [cls, *a, sep]
    row = first + (middle[1:] + b + [sep] if pair else [])
    ids[i, : len(row)] = row
    mask[i, : len(row)] = 1
    if pair and with_types:
      types[i, len(first) : len(row)] = 1
  return {
    "input_ids": ids,
    "input_mask": mask,
    "segment_ids": types,
    "labels": split.labels,
    "weights": np.ones([n], np.float32),
  }


class EpochExamples:
  """Endless examples over encoded arrays: epoch e visits them in the order seeded by (seed, e)."""

  def __init__(self, arrays: dict[str, np.ndarray], seed: int):
    self.arrays = arrays
    self.size = len(arrays["labels"])
    self.seed = int(seed)

  @functools.lru_cache(maxsize=4)
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.size)

  def rows(self, indices: np.ndarray) -> np.ndarray:
    idx = np.asarray(indices, np.int64).reshape(-1)
    out = np.empty(idx.size, np.int64)
    for epoch in np.unique(idx // self.size):
      where = idx // self.size == epoch
      out[where] = self._order(int(epoch))[idx[where] % self.size]
    return out

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    rows = self.rows(indices)
    return {k: v[rows] for k, v in self.arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
  """Every example in order, in batches of `batch_size`; the last padded with weight-0 copies of row 0."""
  n = len(arrays["labels"])
  out = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < n
    batch = {k: v[np.where(valid, rows, 0)] for k, v in arrays.items()}
    batch["weights"] = valid.astype(np.float32)
    out.append(batch)
  return out


class ClassifierTask(base.Task):
  """Sequence classification or regression with a BERT or RoBERTa encoder."""

  name = "finetune"
  sampling = None
  layer_stacks = {"layer": "layers"}

  def __init__(self, config, tokenizer, dataset: tasks_lib.Dataset | None = None):
    vocab = base.tokenizer_vocab_size(
      config, tokenizer, "fine-tuning needs the tokenizer the model was pretrained with"
    )
    self.model_config = base.model_config(bert_model.BertConfig, config, vocab)
    self.head = config.finetune.head
    if self.head not in heads.HEADS:
      raise PretrainError(f"finetune.head={self.head!r}: expected one of {', '.join(heads.HEADS)}")
    self.kind = config.finetune.kind
    self.num_outputs = int(config.finetune.num_outputs)
    self.seq_len = int(config.finetune.max_seq_length)
    if self.seq_len > self.model_config.max_length:
      raise PretrainError(
        f"finetune.max_seq_length={self.seq_len} exceeds the model's {self.model_config.max_length} "
        "positions"
      )
    if self.head == heads.POOLED and not self.model_config.pooler:
      raise PretrainError("the pooled head needs model.pooler=True")
    self.tokenizer = tokenizer
    self.dataset = dataset

  def encode(self, split: tasks_lib.Split) -> dict[str, np.ndarray]:
    return encode(
      split,
      self.tokenizer,
      self.seq_len,
      self.head,
      with_types=self.model_config.type_vocab_size > 1,
    )

  # --- data ---------------------------------------------------------------

  def examples(self, docs, seed: int):
    """Epochs over `docs`: a split (pretrain.finetune.tasks.Split) or its encoded arrays."""
    arrays = docs if isinstance(docs, dict) else self.encode(docs)
    return EpochExamples(arrays, seed)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    label_dtype = np.float32 if self.kind == tasks_lib.REGRESSION else np.int32
    ids = np.zeros([batch_size, self.seq_len], np.int32)
    return {
      "input_ids": ids,
      "input_mask": ids.copy(),
      "segment_ids": ids.copy(),
      "labels": np.zeros([batch_size], label_dtype),
      "weights": np.zeros([batch_size], np.float32),
    }

  @property
  def tokens_per_example(self) -> int:
    return self.seq_len

  # --- model, loss, metrics -------------------------------------------------

  def build_model(self):
    return heads.SequenceClassifier(self.model_config, self.num_outputs, self.head)

  def init_args(self, batch):
    return batch["input_ids"], batch["segment_ids"], batch["input_mask"]

  def denominators(self, batch) -> dict:
    return {"examples": jnp.maximum(jnp.sum(batch["weights"]), 1.0)}

  def logits(self, model, params, batch, *, dropout_rng=None, deterministic=True):
    rngs = None if deterministic else {"dropout": dropout_rng}
    return model.apply(
      {"params": params}, *self.init_args(batch), deterministic=deterministic, rngs=rngs
    )

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    logits = self.logits(model, params, batch, dropout_rng=dropout_rng, deterministic=deterministic)
    w = batch["weights"]
    if self.kind == tasks_lib.REGRESSION:
      per_example = jnp.square(logits[:, 0] - batch["labels"])  # HF's MSELoss for num_labels=1.
      sums = {}
    else:
      per_example, correct, _ = cross_entropy(logits, batch["labels"])
      sums = {"correct": jnp.sum(correct * w)}
    loss_sum = jnp.sum(per_example * w)
    sums.update(loss_sum=loss_sum, count=jnp.sum(w))
    return loss_sum / denominators["examples"], sums

  @staticmethod
  def finalize(sums) -> dict:
    count = sums["count"] + 1e-9
    out = {"loss": sums["loss_sum"] / count}
    if "correct" in sums:
      out["accuracy"] = sums["correct"] / count
    return out

  def predict(self, model, params, batch):
    """The model's outputs on a batch (jitted by the evaluator)."""
    return self.logits(model, params, batch)

  def predictions(self, outputs: np.ndarray) -> np.ndarray:
    """Class indices (argmax) or regression values of `predict`'s outputs."""
    return outputs[:, 0] if self.kind == tasks_lib.REGRESSION else np.argmax(outputs, axis=-1)

  def train_flops_per_example(self) -> float:
    encoder = bert_model.forward_flops_per_sequence(self.model_config, self.seq_len, 0)
    return 3.0 * (encoder + heads.classifier_flops(self.model_config, self.num_outputs, self.head))

  def describe(self) -> dict:
    return {
      "model": dataclasses.asdict(self.model_config),
      "head": self.head,
      "kind": self.kind,
      "num_outputs": self.num_outputs,
      "max_seq_length": self.seq_len,
    }

  def check_resume(self, config, saved: dict) -> None:
    super().check_resume(config, saved)
    check_finetune_fields(config, saved)
