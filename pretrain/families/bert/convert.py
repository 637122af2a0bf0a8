"""BERT <-> Hugging Face transformers' BertForPreTraining, BertForMaskedLM and BertModel.

One table (`entries`) maps every HF tensor to a project param; both directions
read it. With p = 'bert.' ('' in a BertModel folder):

  {p}embeddings.word_embeddings.weight        bert/embeddings/word_embeddings/embedding
  {p}embeddings.position_embeddings.weight    bert/embeddings/position_embeddings/embedding
  {p}embeddings.token_type_embeddings.weight  bert/embeddings/token_type_embeddings/embedding
  {p}embeddings.LayerNorm                     bert/embeddings/layer_norm
  {p}encoder.layer.{i}.attention.self.{query,key,value}
                                              bert/encoder/layer_{i}/attention/{query,key,value}
  {p}encoder.layer.{i}.attention.output.dense bert/encoder/layer_{i}/attention/out
  {p}encoder.layer.{i}.attention.output.LayerNorm  .../attention_layer_norm
  {p}encoder.layer.{i}.intermediate.dense     .../intermediate
  {p}encoder.layer.{i}.output.dense           .../output
  {p}encoder.layer.{i}.output.LayerNorm       .../output_layer_norm
  {p}pooler.dense                             bert/pooler
  cls.predictions.transform.dense             mlm_head/transform
  cls.predictions.transform.LayerNorm         mlm_head/transform_layer_norm
  cls.predictions.bias                        mlm_head/output_bias
  cls.seq_relationship                        nsp_head

A Linear's weight [out, in] is the transposed kernel [in, out]; a LayerNorm's
weight/bias are scale/bias. The MLM decoder is the word embedding table (HF
ties it and usually does not store it; a stored copy must equal the table).

Heads: BertForPreTraining has all of them. BertForMaskedLM has the MLM head,
and the pooler and NSP head are taken when the file has them (bert-base-uncased
does). BertModel has no heads: the MLM head (and the NSP head, with a pooler)
start freshly initialized, as in transformers when BertForPreTraining loads a
BertModel. Export writes BertForPreTraining with an NSP head, else
BertForMaskedLM.

Sequence classification (pretrain/finetune/heads.py): BertForSequenceClassification
is the encoder with its pooler and `classifier` (-> classifier/{kernel,bias});
its labels (id2label, problem_type) become the converted config's `finetune`
section (head, kind, num_outputs, label_names), and a fine-tuned run, whose
config has that section, exports as BertForSequenceClassification.

HF's 'gelu' is the exact erf GELU, as pretrain/families/bert/model.py's; BERT's
LayerNorm eps is 1e-12 (config.json's layer_norm_eps is carried over).
"""

import dataclasses
import re

import flax.linen as nn
import jax
import numpy as np

from pretrain.convert import checkpoints
from pretrain.convert import steps
from pretrain.convert.hf_io import HfTensors
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert_model
from pretrain.families.bert import config as bert_config_lib

TASK = "bert"
CLASSIFIER = "BertForSequenceClassification"
ARCHITECTURES = ("BertForPreTraining", "BertForMaskedLM", "BertModel", CLASSIFIER)
base_config = bert_config_lib.bert_config  # The converted config's defaults.

# transformers' BertConfig defaults, for fields a config.json leaves out.
HF_DEFAULTS = dict(
  vocab_size=30522,
  hidden_size=768,
  num_hidden_layers=12,
  num_attention_heads=12,
  intermediate_size=3072,
  hidden_act="gelu",
  hidden_dropout_prob=0.1,
  attention_probs_dropout_prob=0.1,
  max_position_embeddings=512,
  type_vocab_size=2,
  initializer_range=0.02,
  layer_norm_eps=1e-12,
  pad_token_id=0,
  position_embedding_type="absolute",
  is_decoder=False,
  add_cross_attention=False,
  tie_word_embeddings=True,
)
# HF config field -> BertConfig field.
_FIELDS = dict(
  vocab_size="vocab_size",
  hidden_size="hidden_size",
  num_hidden_layers="num_layers",
  num_attention_heads="num_heads",
  intermediate_size="intermediate_size",
  max_position_embeddings="max_position_embeddings",
  type_vocab_size="type_vocab_size",
  hidden_dropout_prob="dropout_rate",
  attention_probs_dropout_prob="attention_dropout_rate",
  layer_norm_eps="layer_norm_eps",
  initializer_range="initializer_range",
)
_BUFFERS = re.compile(
  r"(^|\.)embeddings\.(position_ids|token_type_ids)$"
)  # Non-trainable buffers of old files.


@dataclasses.dataclass(frozen=True)
class HeadNames:
  """HF names of the heads around the encoder (they differ between BERT and RoBERTa)."""

  transform: str
  transform_norm: str
  output_bias: str
  decoder: str  # Tied to the word embeddings; stored copies are checked, not read.
  nsp: str | None = None


BERT_HEADS = HeadNames(
  transform="cls.predictions.transform.dense",
  transform_norm="cls.predictions.transform.LayerNorm",
  output_bias="cls.predictions.bias",
  decoder="cls.predictions.decoder",
  nsp="cls.seq_relationship",
)


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str  # HF tensor name.
  path: tuple[str, ...]  # Project param path.
  shape: tuple[int, ...]  # Project shape.
  transpose: bool  # HF holds the transpose (Linear weights).
  implied_by: str  # The config.json fields the shape follows from.


def _linear(hf, path, n_in, n_out, implied_by):
  return [
    Entry(f"{hf}.weight", path + ("kernel",), (n_in, n_out), True, implied_by),
    Entry(f"{hf}.bias", path + ("bias",), (n_out,), False, implied_by),
  ]


def _norm(hf, path, h):
  return [
    Entry(f"{hf}.weight", path + ("scale",), (h,), False, f"hidden_size={h}"),
    Entry(f"{hf}.bias", path + ("bias",), (h,), False, f"hidden_size={h}"),
  ]


def entries(model: dict, prefix: str, heads: HeadNames, with_heads: bool = True) -> list[Entry]:
  """Every HF tensor <-> project param of a BERT-style model (`model`: BertConfig fields).

  with_heads=False leaves out the MLM and NSP heads (HF's BertModel has none).
  """
  v, h, i = model["vocab_size"], model["hidden_size"], model["intermediate_size"]
  hh, hi = f"hidden_size={h}", f"hidden_size={h}, intermediate_size={i}"
  e = prefix + "embeddings."
  out = [
    Entry(
      e + "word_embeddings.weight",
      ("bert", "embeddings", "word_embeddings", "embedding"),
      (v, h),
      False,
      f"vocab_size={v}, hidden_size={h}",
    ),
    Entry(
      e + "position_embeddings.weight",
      ("bert", "embeddings", "position_embeddings", "embedding"),
      (model["max_position_embeddings"], h),
      False,
      f"max_position_embeddings={model['max_position_embeddings']}, hidden_size={h}",
    ),
    Entry(
      e + "token_type_embeddings.weight",
      ("bert", "embeddings", "token_type_embeddings", "embedding"),
      (model["type_vocab_size"], h),
      False,
      f"type_vocab_size={model['type_vocab_size']}, hidden_size={h}",
    ),
    *_norm(e + "LayerNorm", ("bert", "embeddings", "layer_norm"), h),
  ]
  for n in range(model["num_layers"]):
    hf, path = f"{prefix}encoder.layer.{n}.", ("bert", "encoder", f"layer_{n}")
    out += [
      *_linear(hf + "attention.self.query", path + ("attention", "query"), h, h, hh),
      *_linear(hf + "attention.self.key", path + ("attention", "key"), h, h, hh),
      *_linear(hf + "attention.self.value", path + ("attention", "value"), h, h, hh),
      *_linear(hf + "attention.output.dense", path + ("attention", "out"), h, h, hh),
      *_norm(hf + "attention.output.LayerNorm", path + ("attention_layer_norm",), h),
      *_linear(hf + "intermediate.dense", path + ("intermediate",), h, i, hi),
      *_linear(hf + "output.dense", path + ("output",), i, h, hi),
      *_norm(hf + "output.LayerNorm", path + ("output_layer_norm",), h),
    ]
  if model["pooler"]:
    out += _linear(prefix + "pooler.dense", ("bert", "pooler"), h, h, hh)
  if with_heads:
    out += [
      *_linear(heads.transform, ("mlm_head", "transform"), h, h, hh),
      *_norm(heads.transform_norm, ("mlm_head", "transform_layer_norm"), h),
      Entry(heads.output_bias, ("mlm_head", "output_bias"), (v,), False, f"vocab_size={v}"),
    ]
  if model["nsp_head"] and heads.nsp and with_heads:
    out += _linear(heads.nsp, ("nsp_head",), h, 2, hh)
  return out


def hf_fields(hf_config: dict, defaults: dict) -> dict:
  """config.json over transformers' defaults, with the fields the project's BERT cannot express rejected."""
  f = dict(defaults, **{k: v for k, v in hf_config.items() if v is not None})
  checks = (
    (
      "hidden_act",
      f["hidden_act"] == "gelu",
      "the project's BERT uses the exact (erf) GELU, HF's 'gelu'",
    ),
    (
      "position_embedding_type",
      f["position_embedding_type"] == "absolute",
      "only 'absolute' positions exist",
    ),
    ("is_decoder", not f["is_decoder"], "the project's BERT is an encoder"),
    (
      "add_cross_attention",
      not f["add_cross_attention"],
      "the project's BERT has no cross-attention",
    ),
    (
      "tie_word_embeddings",
      f["tie_word_embeddings"],
      "the MLM decoder is the word embedding table",
    ),
  )
  for name, ok, why in checks:
    if not ok:
      raise PretrainError(f"config.json {name}={f[name]!r} is not supported: {why}")
  for name in _FIELDS:
    if isinstance(f[name], bool) or not isinstance(f[name], (int, float)):
      raise PretrainError(f"config.json {name}={f[name]!r} must be a number")
  return f


def model_fields(f: dict, **options) -> dict:
  """The project model section (BertConfig fields) of HF fields `f`."""
  return steps.buildable(
    bert_model.BertConfig, dict({ours: f[hf] for hf, ours in _FIELDS.items()}, **options)
  )


def check_tensors(t: HfTensors, prefix: str, model: dict) -> None:
  """The errors worth a specific message before the tensor-by-tensor checks: vocabulary and layer count."""
  word = prefix + "embeddings.word_embeddings.weight"
  if word in t and t.shape(word)[0] != model["vocab_size"]:
    raise PretrainError(
      f"{t.source}: vocab mismatch: tensor {word} has {t.shape(word)[0]} rows but "
      f"config.json vocab_size={model['vocab_size']}"
    )
  steps.check_layer_count(
    t, re.escape(prefix) + r"encoder\.layer\.(\d+)\.", model["num_layers"], "num_hidden_layers"
  )


def read_params(t: HfTensors, table: list[Entry]) -> dict:
  params = {}
  for e in table:
    x = t.take(e.hf, e.shape[::-1] if e.transpose else e.shape, e.implied_by)
    node = params
    for key in e.path[:-1]:
      node = node.setdefault(key, {})
    node[e.path[-1]] = np.ascontiguousarray(x.T if e.transpose else x)
  return params


def write_tensors(params: dict, table: list[Entry]) -> dict[str, np.ndarray]:
  flat = checkpoints.flatten(params)
  tensors = {}
  for e in table:
    x = np.asarray(flat["/".join(e.path)], np.float32)
    tensors[e.hf] = np.ascontiguousarray(x.T if e.transpose else x)
  return tensors


def skip_tied_decoder(t: HfTensors, heads: HeadNames, params: dict, prefix: str) -> None:
  """A stored MLM decoder must be the word embedding table (and its bias the output bias)."""
  tied = (
    (
      f"{heads.decoder}.weight",
      params["bert"]["embeddings"]["word_embeddings"]["embedding"],
      prefix + "embeddings.word_embeddings.weight",
    ),
    (f"{heads.decoder}.bias", params["mlm_head"]["output_bias"], heads.output_bias),
  )
  for name, value, source in tied:
    steps.skip_tied(
      t,
      name,
      value,
      source,
      "an untied MLM decoder is not supported (the project's decoder is the word embedding table)",
    )


def skip_buffers(t: HfTensors) -> None:
  for name in t.names():
    if _BUFFERS.search(name):
      t.skip(name)


# The family interface (see pretrain/convert/__init__.py).


def project_sections(hf_config: dict, t: HfTensors) -> dict:
  """The project config sections of an HF BERT folder."""
  arch = hf_config["architectures"][0]
  f = hf_fields(hf_config, HF_DEFAULTS)
  if arch == CLASSIFIER:
    model = model_fields(f, pooler=True, nsp_head=False)
    return classifier_sections(
      hf_config, model, TASK, "pooled", min(128, f["max_position_embeddings"])
    )
  prefix = _prefix(t)
  pooler = arch == "BertForPreTraining" or prefix + "pooler.dense.weight" in t
  nsp = (
    arch == "BertForPreTraining"
    or f"{BERT_HEADS.nsp}.weight" in t
    or (arch == "BertModel" and pooler)
  )
  model = model_fields(f, pooler=pooler, nsp_head=nsp)
  seq = min(128, model["max_position_embeddings"])
  return {
    "task": {"name": TASK},
    "model": model,
    "data": {"next_sentence_prediction": nsp, "max_seq_length": seq},
  }


def _prefix(t: HfTensors) -> str:
  return "" if "embeddings.word_embeddings.weight" in t else "bert."


def hf_to_params(t: HfTensors, hf_config: dict, model: dict) -> tuple[dict, list[str]]:
  """(params, the param subtrees left to a fresh init)."""
  arch = hf_config["architectures"][0]
  if arch == CLASSIFIER:
    return read_classifier(t, "bert.", model, head_section(hf_config, "pooled")), []
  prefix = _prefix(t)
  check_tensors(t, prefix, model)
  has_heads = arch != "BertModel"
  params = read_params(t, entries(model, prefix, BERT_HEADS, with_heads=has_heads))
  skip_buffers(t)
  if has_heads:
    skip_tied_decoder(t, BERT_HEADS, params, prefix)
    return params, []
  return params, ["mlm_head"] + (["nsp_head"] if model["nsp_head"] else [])


def check_attention(model: dict, position: str, arch: str) -> None:
  """The project model's attention must be HF's: multi-head, with `position`, and no extras."""
  a = dict(model.get("attention") or {})
  checks = (
    ("position", a.get("position", position) == position, f"{arch} has position {position!r}"),
    (
      "num_kv_heads",
      a.get("num_kv_heads") in (None, 0, model["num_heads"]),
      f"{arch} has multi-head attention",
    ),
    ("qk_norm", a.get("qk_norm") in (None, "none"), f"{arch} has no query/key norm"),
    ("logits_soft_cap", not a.get("logits_soft_cap"), f"{arch} has no logits soft-cap"),
    ("sliding_window", not a.get("sliding_window"), f"{arch} attends to the whole context"),
  )
  for name, ok, why in checks:
    if not ok:
      raise PretrainError(f"model.attention.{name}={a[name]!r} cannot be exported: {why}")


def complete_model(model: dict) -> dict:
  """A config's model section with every field, the missing ones at the model's defaults."""
  return dataclasses.asdict(bert_model.BertConfig.from_dict(model))


def params_to_hf(
  params: dict, model: dict, special_ids: dict, base: dict | None, head: dict | None = None
) -> tuple[dict, dict]:
  """(config.json, tensors) of HF's BertForPreTraining (with an NSP head) or BertForMaskedLM, or with a
  sequence classification `head` (a fine-tuned run's finetune section) BertForSequenceClassification."""
  if model.get("position_offset", 0):
    raise PretrainError(
      f"model.position_offset={model['position_offset']}: HF's BERT counts positions from 0 "
      "(a RoBERTa checkpoint exports as task 'roberta')"
    )
  arch = CLASSIFIER if head else "BertForPreTraining" if model["nsp_head"] else "BertForMaskedLM"
  check_attention(model, "learned", arch)
  config = hf_config(model, arch, "bert", base)
  config["pad_token_id"] = special_ids["pad_token_id"]
  if head:
    check_head(head, "pooled", arch)
    config.update(head_hf_config(head))
    table = entries(model, "bert.", BERT_HEADS, with_heads=False) + classifier_entries(model, head)
    return config, write_tensors(params, table)
  return config, write_tensors(params, entries(model, "bert.", BERT_HEADS))


def hf_config(model: dict, arch: str, model_type: str, base: dict | None) -> dict:
  """config.json fields of a BERT-style model, over `base` (the source's config.json, when converted from HF)."""
  if model.get("pre_layer_norm"):
    raise PretrainError(
      f"model.pre_layer_norm=True cannot be exported: {arch} has post-LayerNorm blocks only"
    )
  config = steps.hf_config(base, model, _FIELDS)
  config.update(
    architectures=[arch],
    model_type=model_type,
    hidden_act="gelu",
    position_embedding_type="absolute",
    tie_word_embeddings=True,
    is_decoder=False,
    add_cross_attention=False,
    dtype="float32",
  )
  return config


def bert_config(model: dict) -> bert_model.BertConfig:
  return bert_model.BertConfig.from_dict(dict(model, scan_layers=False, remat_policy="none"))


def abstract_params(model: dict, head: dict | None = None):
  """The unscanned param tree of `model` (with a sequence classification `head`) as ShapeDtypeStructs."""
  if head:
    from pretrain.finetune import heads  # pylint: disable=import-outside-toplevel

    return heads.abstract_params(bert_config(model), int(head["num_outputs"]), head["head"])
  return nn.unbox(bert_model.abstract_params(bert_config(model), seq_len=1, num_predictions=1))


# Sequence classification heads (BERT's and RoBERTa's HF *ForSequenceClassification).


def head_section(hf_config: dict, head: str) -> dict:
  """The finetune section (head, kind, num_outputs, label_names) of an HF classifier's config.json."""
  id2label = hf_config.get("id2label") or {}
  n = len(id2label) if id2label else int(hf_config.get("num_labels", 2))
  problem = hf_config.get("problem_type")
  if problem not in (None, "regression", "single_label_classification"):
    raise PretrainError(
      f"config.json problem_type={problem!r} is not supported: single-label classification or "
      "regression"
    )
  regression = problem == "regression" or (problem is None and n == 1)
  names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
  return {
    "head": head,
    "kind": "regression" if regression else "classification",
    "num_outputs": n,
    "label_names": "" if regression else ",".join(names),
  }


def classifier_sections(hf_config: dict, model: dict, task: str, head: str, seq: int) -> dict:
  return {
    "task": {"name": task},
    "model": model,
    "data": {"next_sentence_prediction": False, "max_seq_length": seq},
    "finetune": head_section(hf_config, head),
  }


def check_head(head: dict, expected: str, arch: str) -> None:
  if head.get("head") != expected:
    raise PretrainError(
      f"finetune.head={head.get('head')!r} cannot be exported: {arch} has {expected!r}"
    )


def head_hf_config(head: dict) -> dict:
  """config.json's label fields of a finetune section."""
  n = int(head["num_outputs"])
  names = [s for s in str(head.get("label_names") or "").split(",") if s] or [
    f"LABEL_{i}" for i in range(n)
  ]
  regression = head.get("kind") == "regression"
  return {
    "problem_type": "regression" if regression else "single_label_classification",
    "id2label": {str(i): names[i] if i < len(names) else f"LABEL_{i}" for i in range(n)},
    "label2id": {(names[i] if i < len(names) else f"LABEL_{i}"): i for i in range(n)},
  }


def classifier_entries(model: dict, head: dict) -> list[Entry]:
  h, n = model["hidden_size"], int(head["num_outputs"])
  why = f"hidden_size={h}, num_labels={n}"
  if head["head"] == "pooled":
    return _linear("classifier", ("classifier",), h, n, why)
  return [
    *_linear("classifier.dense", ("classifier", "dense"), h, h, f"hidden_size={h}"),
    *_linear("classifier.out_proj", ("classifier", "out_proj"), h, n, why),
  ]


def read_classifier(t: HfTensors, prefix: str, model: dict, head: dict) -> dict:
  """The params of an HF *ForSequenceClassification: encoder (no MLM head) + classifier."""
  check_tensors(t, prefix, model)
  params = read_params(
    t, entries(model, prefix, BERT_HEADS, with_heads=False) + classifier_entries(model, head)
  )
  skip_buffers(t)
  return params


def init_heads(model: dict, seed: int) -> dict:
  """Freshly initialized params of the heads (mlm_head, nsp_head), as numpy.

  The heads' init does not depend on the encoder, so a model without layers
  initializes them (compiling the init of every layer takes seconds).
  """
  cfg = dataclasses.replace(bert_config(model), num_layers=0)
  init = jax.jit(
    lambda key: bert_model.BertForPreTraining(cfg).init(key, **bert_model.init_inputs(1, 1, 1))
  )
  params = nn.unbox(init(jax.random.key(seed))["params"])
  return {k: jax.tree.map(np.asarray, v) for k, v in params.items() if k != "bert"}
