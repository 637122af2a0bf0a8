"""Sequence classification / regression heads on the BERT-family encoder, as HF's
`BertForSequenceClassification` and `RobertaForSequenceClassification` compute them.

  pooled       (BERT)     encoder -> tanh pooler on [CLS] -> dropout -> classifier
  first_token  (RoBERTa)  encoder -> <s> -> dropout -> dense -> tanh -> dropout -> out_proj
  mean         (option)   encoder -> mean over the real tokens -> dropout -> classifier

`mean` is in neither HF class (`pretrain.convert to-hf` refuses it). It reads every token's
state, where the others read the [CLS] / <s> position, which pretraining trains only through
next-sentence prediction (BERT) or not at all (RoBERTa): a checkpoint whose NSP head stayed at
chance has learned nothing there that a classifier could read (BENCHMARKS.md, "Fine-tuning").

The encoder is the family's `BertModel` (pretrain/families/bert/model.py) under
the same name as in pretraining ("bert"), so a pretraining checkpoint's encoder
loads as it is. Parameter tree (HF names in parentheses):

  bert/...                          as BertForPreTraining's (bert.* / roberta.*)
  classifier/{kernel,bias}          pooled, mean: (classifier)
  classifier/dense, classifier/out_proj   first_token: (classifier.dense, classifier.out_proj)

HF's dropout before the classifier is `classifier_dropout`, or the hidden
dropout when that is unset: here the model's dropout_rate. `num_outputs` is the
number of classes, or 1 for regression (HF's num_labels=1, MSE loss).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pretrain.families.bert import model as bert_model
from pretrain.models import layers

POOLED, FIRST_TOKEN, MEAN = "pooled", "first_token", "mean"
HEADS = (POOLED, FIRST_TOKEN, MEAN)
# The head each family's HF *ForSequenceClassification has.
FAMILY_HEADS = {"bert": POOLED, "roberta": FIRST_TOKEN}


class FirstTokenHead(nn.Module):
  """RoBERTa's classification head on the first token's hidden state."""

  config: bert_model.BertConfig
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    init = layers.default_init(cfg.initializer_range)
    dropout = layers.Dropout(cfg.dropout_rate)
    x = dropout(x, deterministic=deterministic)
    x = layers.Dense(
      cfg.hidden_size, ("embed", "mlp"), dtype=cfg.compute_dtype, kernel_init=init, name="dense"
    )(x)
    x = dropout(jnp.tanh(x), deterministic=deterministic)
    return layers.Dense(
      self.num_outputs,
      ("mlp", "classes"),
      dtype=cfg.compute_dtype,
      kernel_init=init,
      name="out_proj",
    )(x)


class SequenceClassifier(nn.Module):
  """(input_ids, segment_ids, input_mask) -> float32 logits [batch, num_outputs]."""

  config: bert_model.BertConfig
  num_outputs: int
  head: str = POOLED

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True):
    cfg = self.config
    sequence, pooled = bert_model.BertModel(cfg, name="bert")(
      input_ids, segment_ids, input_mask, deterministic
    )
    if self.head == FIRST_TOKEN:
      logits = FirstTokenHead(cfg, self.num_outputs, name="classifier")(
        sequence[:, 0], deterministic
      )
    else:
      if self.head == MEAN:
        mask = input_mask[:, :, None].astype(jnp.float32)  # [batch, length, 1]
        pooled = jnp.sum(sequence.astype(jnp.float32) * mask, 1) / jnp.maximum(mask.sum(1), 1.0)
      x = layers.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
      logits = layers.Dense(
        self.num_outputs,
        ("embed", "classes"),
        dtype=cfg.compute_dtype,
        kernel_init=layers.default_init(cfg.initializer_range),
        name="classifier",
      )(x)
    return logits.astype(jnp.float32)


def classifier_flops(config: bert_model.BertConfig, num_outputs: int, head: str) -> float:
  """Matmul FLOPs of the head on one sequence (the pooler is counted with the encoder)."""
  h = config.hidden_size
  return float(2 * h * num_outputs + (2 * h * h if head == FIRST_TOKEN else 0))


def abstract_params(config: bert_model.BertConfig, num_outputs: int, head: str):
  """The classifier's unscanned param tree as ShapeDtypeStructs (allocates nothing)."""
  ids = jnp.zeros([1, 1], jnp.int32)
  model = SequenceClassifier(config, num_outputs, head)
  return nn.unbox(
    jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids + 1))["params"]
  )
