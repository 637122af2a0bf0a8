"""BERT pretraining: masked LM + next-sentence prediction (Devlin et al. 2018)."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from pretrain.errors import PretrainError
from pretrain.families import base
from pretrain.families.bert import model as bert_model
from pretrain.families.bert.examples import BertExampleConfig, BertExamples
from pretrain.models import stack
from pretrain.objectives.losses import cross_entropy


def model_config(config, tokenizer, **defaults) -> bert_model.BertConfig:
  """The BertConfig of `config.model` (keys it lacks from `defaults`), its vocabulary checked against the tokenizer."""
  return base.model_config(
    bert_model.BertConfig, config, base.tokenizer_vocab_size(config, tokenizer), **defaults
  )


def check_seq_length(max_seq_length: int, model_cfg: bert_model.BertConfig) -> None:
  if max_seq_length > model_cfg.max_length:
    offset = (
      f" - model.position_offset={model_cfg.position_offset}" if model_cfg.position_offset else ""
    )
    raise PretrainError(
      f"data.max_seq_length={max_seq_length} exceeds model.max_position_embeddings="
      f"{model_cfg.max_position_embeddings}{offset}"
    )


class BertTask(base.Task):
  """MLM + NSP on `[CLS] A [SEP] B [SEP]` pairs built on the fly from the corpus.

  With model.nsp_head=False and data.next_sentence_prediction=False it is MLM only.
  A subclass (RoBERTa) changes the model defaults and the option checks through
  `_model_config` and `_check_options`, and the examples through the two
  example classes.
  """

  name = "bert"
  sampling = base.FILL_MASKS
  layer_stacks = {"layer": "layers"}
  # The examples and their options; the options are the data section's keys of the same names.
  example_config_class = BertExampleConfig
  examples_class = BertExamples

  def __init__(self, config, tokenizer):
    self.model_config = self._model_config(config, tokenizer)
    d = config.data
    self._check_options(d)
    self.example_config = self._example_config(d)
    check_seq_length(d.max_seq_length, self.model_config)
    self.vocab_size = self.model_config.vocab_size
    self.word_start = tokenizer.word_start
    self.special = tokenizer.special
    self.seq_len = d.max_seq_length
    self.num_predictions = d.max_predictions_per_seq

  def _model_config(self, config, tokenizer) -> bert_model.BertConfig:
    return model_config(config, tokenizer)

  def _check_options(self, data) -> None:
    """The data and model options must agree: the NSP head trains on the pairs' is-next labels."""
    nsp, head = bool(data.next_sentence_prediction), self.model_config.nsp_head
    if nsp != head:
      raise PretrainError(
        f"data.next_sentence_prediction={nsp} needs model.nsp_head={nsp} (it is {head}): "
        + (
          "the next-sentence head needs sentence pairs"
          if nsp
          else "without sentence pairs the next-sentence head would train on constant labels"
        )
      )

  def _example_config(self, data):
    cls = self.example_config_class
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

  # --- data ---------------------------------------------------------------

  def examples(self, docs, seed: int):
    return self.examples_class(
      docs,
      self.example_config,
      self.vocab_size,
      seed,
      word_start=self.word_start,
      special=self.special,
    )

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros of every batch field's shape and dtype (for init and compilation)."""
    l, p = self.seq_len, self.num_predictions
    return {
      "input_ids": np.zeros([batch_size, l], np.int32),
      "input_mask": np.zeros([batch_size, l], np.int32),
      "segment_ids": np.zeros([batch_size, l], np.int32),
      "masked_lm_positions": np.zeros([batch_size, p], np.int32),
      "masked_lm_ids": np.zeros([batch_size, p], np.int32),
      "masked_lm_weights": np.zeros([batch_size, p], np.float32),
      "next_sentence_labels": np.zeros([batch_size], np.int32),
    }

  @property
  def tokens_per_example(self) -> int:
    return self.seq_len

  @property
  def min_shard(self) -> tuple[int, int]:
    """(documents, tokens) a shard needs for examples: NSP draws its random segment from another document."""
    return (2 if self.example_config.next_sentence_prediction else 1), 1

  # --- model, loss, metrics -------------------------------------------------

  def build_model(self):
    return bert_model.BertForPreTraining(self.model_config)

  def init_args(self, batch):
    return (
      batch["input_ids"],
      batch["segment_ids"],
      batch["input_mask"],
      batch["masked_lm_positions"],
    )

  def denominators(self, batch) -> dict:
    """Normalisers over the whole (global) batch, so microbatch gradients sum to the batch gradient."""
    out = {"mlm": jnp.sum(batch["masked_lm_weights"]) + 1e-5}  # BERT's own epsilon.
    if self.model_config.nsp_head:
      out["nsp"] = jnp.asarray(batch["input_ids"].shape[0], jnp.float32)
    return out

  def loss(self, model, params, batch, denominators, *, dropout_rng=None, deterministic=True):
    """(objective, metric sums) for a (micro)batch; objectives of microbatches add up."""
    rngs = None if deterministic else {"dropout": dropout_rng}
    mlm_logits, nsp_logits = model.apply(
      {"params": params}, *self.init_args(batch), deterministic=deterministic, rngs=rngs
    )
    w = batch["masked_lm_weights"]
    mlm_nll, mlm_correct, _ = cross_entropy(mlm_logits, batch["masked_lm_ids"])
    mlm_loss_sum = jnp.sum(mlm_nll * w)
    objective = mlm_loss_sum / denominators["mlm"]
    sums = {
      "mlm_loss": mlm_loss_sum,
      "mlm_correct": jnp.sum(mlm_correct * w),
      "mlm_weight": jnp.sum(w),
    }
    if nsp_logits is not None:
      nsp_nll, nsp_correct, _ = cross_entropy(nsp_logits, batch["next_sentence_labels"])
      nsp_loss_sum = jnp.sum(nsp_nll)
      objective = objective + nsp_loss_sum / denominators["nsp"]
      sums.update(
        nsp_loss=nsp_loss_sum,
        nsp_correct=jnp.sum(nsp_correct),
        nsp_count=jnp.asarray(nsp_nll.shape[0], jnp.float32),
      )
    return objective, sums

  @staticmethod
  def finalize(sums) -> dict:
    """Metric values from summed counts (works on jax or numpy scalars); NSP ones when there are NSP sums."""
    mlm_w = sums["mlm_weight"] + 1e-5
    mlm_loss = sums["mlm_loss"] / mlm_w
    out = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": sums["mlm_correct"] / mlm_w}
    if "nsp_count" in sums:
      nsp_loss = sums["nsp_loss"] / sums["nsp_count"]
      out.update(
        loss=mlm_loss + nsp_loss,
        nsp_loss=nsp_loss,
        nsp_accuracy=sums["nsp_correct"] / sums["nsp_count"],
      )
    return out

  def train_flops_per_example(self, *, skip_masked_attention: bool = False) -> float:
    """Model FLOPs of forward + backward for one sequence (backward = 2x forward).

    skip_masked_attention: leave out the attention matmuls on the query-key
    pairs a sliding window hides (what an ablation's FLOP budget counts);
    False counts the full score matrix, as MFU does.
    """
    mc = self.model_config
    forward = bert_model.forward_flops_per_sequence(mc, self.seq_len, self.num_predictions)
    if skip_masked_attention:
      forward -= mc.num_layers * stack.masked_attention_flops(
        mc.attention_features[0], self.seq_len, self.seq_len, window=mc.attention.sliding_window
      )
    return 3.0 * forward

  def describe(self) -> dict:
    return {
      "model": dataclasses.asdict(self.model_config),
      "examples": dataclasses.asdict(self.example_config),
    }

  def mask_logits(self, model, params, ids: np.ndarray):
    """Logits [masks, vocab] at each mask id of `ids` ([CLS] ... [SEP], at most data.max_seq_length)."""
    if len(ids) > self.seq_len:
      raise PretrainError(
        f"the prompt is {len(ids)} tokens; the model was trained on at most {self.seq_len}"
      )
    positions = np.flatnonzero(ids == self.special.mask).astype(np.int32)
    batch = self.dummy_batch(1)
    batch["input_ids"][0, : len(ids)] = ids
    batch["input_mask"][0, : len(ids)] = 1
    batch["masked_lm_positions"][0, : len(positions)] = positions
    mlm_logits, _ = model.apply({"params": params}, *self.init_args(batch), deterministic=True)
    return mlm_logits[0, : len(positions)]
