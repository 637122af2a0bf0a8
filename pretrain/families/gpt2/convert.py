"""GPT-2 <-> Hugging Face transformers' GPT2LMHeadModel.

One table (`entries`) maps the HF tensors to project params; both directions
read it. With p = 'transformer.' ('' in files saved from a GPT2Model, such as
openai-community/gpt2's model.safetensors):

  {p}wte.weight, {p}wpe.weight              wte/embedding, wpe/embedding
  {p}h.{i}.ln_1, {p}h.{i}.ln_2              h_{i}/ln_1, h_{i}/ln_2
  {p}h.{i}.attn.c_attn                      h_{i}/attn/{query,key,value} (split, see below)
  {p}h.{i}.attn.c_proj                      h_{i}/attn/out
  {p}h.{i}.mlp.c_fc, {p}h.{i}.mlp.c_proj    h_{i}/mlp/c_fc, h_{i}/mlp/c_proj
  {p}ln_f                                   ln_f
  lm_head.weight                            (wte: tied; a stored copy must equal it)

HF's Conv1D weights are already [in, out] kernels: nothing is transposed.
c_attn is the query, key and value kernels side by side, [in, 3 * embed] (and
its bias [3 * embed]); it is split in three on import and concatenated on
export. `h.{i}.attn.bias` and `h.{i}.attn.masked_bias` are the causal-mask
buffers of older files, not weights: they are skipped.

HF's 'gelu_new' (and 'gelu_pytorch_tanh') is the tanh approximation, as
pretrain/families/gpt2/model.py's; attention logits are scaled by 1/sqrt(head_dim)
(`scale_attn_weights`; `reorder_and_upcast_attn` only changes HF's
arithmetic order and precision, and is accepted). HF's embd_pdrop and resid_pdrop are the model's one
dropout_rate, so they must agree. The converted config is
pretrain.families.gpt2.config.gpt2_config() with the checkpoint's shape, so its training
recipe (bfloat16 compute among it) is GPT-2's.

Special ids: GPT-2's <|endoftext|> is both bos and eos. A model trained here
ends every document with [SEP] and starts the next one after it
(pretrain/families/gpt2/examples.py), so its export says bos = eos = [SEP].
"""

import dataclasses
import re

import flax.linen as nn
import numpy as np

from pretrain.families.bert.convert import Entry, check_attention, read_params, write_tensors
from pretrain.convert import steps
from pretrain.convert.hf_io import HfTensors
from pretrain.errors import PretrainError
from pretrain.families.gpt2 import model as gpt2_model
from pretrain.families.gpt2.config import gpt2_config

TASK = "gpt2"
ARCHITECTURES = ("GPT2LMHeadModel",)
PREFIX = "transformer."
base_config = gpt2_config  # The converted config's defaults.

# transformers' GPT2Config defaults, for fields a config.json leaves out.
HF_DEFAULTS = dict(
  vocab_size=50257,
  n_positions=1024,
  n_embd=768,
  n_layer=12,
  n_head=12,
  n_inner=None,
  activation_function="gelu_new",
  resid_pdrop=0.1,
  embd_pdrop=0.1,
  attn_pdrop=0.1,
  layer_norm_epsilon=1e-5,
  initializer_range=0.02,
  scale_attn_weights=True,
  scale_attn_by_inverse_layer_idx=False,
  reorder_and_upcast_attn=False,
  add_cross_attention=False,
  tie_word_embeddings=True,
  bos_token_id=50256,
  eos_token_id=50256,
  pad_token_id=None,
)
# HF config field -> Gpt2Config field (n_inner and embd_pdrop are handled apart).
_FIELDS = dict(
  vocab_size="vocab_size",
  n_embd="hidden_size",
  n_layer="num_layers",
  n_head="num_heads",
  n_positions="max_position_embeddings",
  resid_pdrop="dropout_rate",
  attn_pdrop="attention_dropout_rate",
  layer_norm_epsilon="layer_norm_eps",
  initializer_range="initializer_range",
)
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # The same function, tanh-approximated GELU.
_BUFFERS = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")
_QKV = ("query", "key", "value")


def _prefix(t: HfTensors) -> str:
  return "" if "wte.weight" in t else PREFIX


def entries(model: dict, prefix: str) -> list[Entry]:
  """Every HF tensor <-> project param but the fused c_attn (`_read_attention`, `_write_attention`)."""
  v, h, i, n = (
    model["vocab_size"],
    model["hidden_size"],
    model["intermediate_size"],
    model["max_position_embeddings"],
  )
  hh, hi = f"n_embd={h}", f"n_embd={h}, n_inner={i}"

  def linear(hf, path, n_in, n_out, implied_by):
    return [
      Entry(f"{hf}.weight", path + ("kernel",), (n_in, n_out), False, implied_by),
      Entry(f"{hf}.bias", path + ("bias",), (n_out,), False, implied_by),
    ]

  def norm(hf, path):
    return [
      Entry(f"{hf}.weight", path + ("scale",), (h,), False, hh),
      Entry(f"{hf}.bias", path + ("bias",), (h,), False, hh),
    ]

  out = [
    Entry(prefix + "wte.weight", ("wte", "embedding"), (v, h), False, f"vocab_size={v}, {hh}"),
    Entry(prefix + "wpe.weight", ("wpe", "embedding"), (n, h), False, f"n_positions={n}, {hh}"),
  ]
  for k in range(model["num_layers"]):
    hf, path = f"{prefix}h.{k}.", (f"h_{k}",)
    out += [
      *norm(hf + "ln_1", path + ("ln_1",)),
      *linear(hf + "attn.c_proj", path + ("attn", "out"), h, h, hh),
      *norm(hf + "ln_2", path + ("ln_2",)),
      *linear(hf + "mlp.c_fc", path + ("mlp", "c_fc"), h, i, hi),
      *linear(hf + "mlp.c_proj", path + ("mlp", "c_proj"), i, h, hi),
    ]
  return out + norm(prefix + "ln_f", ("ln_f",))


def _c_attn(prefix: str, k: int) -> str:
  return f"{prefix}h.{k}.attn.c_attn"


def _read_attention(t: HfTensors, params: dict, model: dict, prefix: str) -> None:
  """Splits each layer's c_attn [in, 3 * embed] into the query, key and value kernels (and biases)."""
  h = model["hidden_size"]
  for k in range(model["num_layers"]):
    name = _c_attn(prefix, k)
    kernels = np.split(
      t.take(f"{name}.weight", (h, 3 * h), f"n_embd={h}"), 3, axis=1
    )  # 3 x [in, embed]
    biases = np.split(t.take(f"{name}.bias", (3 * h,), f"n_embd={h}"), 3)  # 3 x [embed]
    attn = params[f"h_{k}"]["attn"]
    for part, kernel, bias in zip(_QKV, kernels, biases):
      attn[part] = {"kernel": np.ascontiguousarray(kernel), "bias": np.ascontiguousarray(bias)}


def _write_attention(params: dict, model: dict, tensors: dict) -> None:
  """Concatenates each layer's query, key and value kernels (and biases) into c_attn."""
  for k in range(model["num_layers"]):
    attn = params[f"h_{k}"]["attn"]
    for hf, leaf, axis in (("weight", "kernel", 1), ("bias", "bias", 0)):
      parts = [
        np.asarray(attn[part][leaf], np.float32) for part in _QKV
      ]  # 3 x [in, embed] or 3 x [embed]
      tensors[f"{_c_attn(PREFIX, k)}.{hf}"] = np.ascontiguousarray(np.concatenate(parts, axis=axis))


def hf_fields(hf_config: dict) -> dict:
  """config.json over transformers' defaults, with the fields the project's GPT-2 cannot express rejected."""
  f = dict(HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None})
  checks = (
    (
      "activation_function",
      f["activation_function"] in _TANH_GELUS,
      "the project's GPT-2 uses the tanh-approximated GELU, HF's 'gelu_new'",
    ),
    (
      "scale_attn_weights",
      f["scale_attn_weights"] is True,
      "the project scales attention logits by 1/sqrt(head_dim)",
    ),
    (
      "scale_attn_by_inverse_layer_idx",
      f["scale_attn_by_inverse_layer_idx"] is False,
      "the project does not scale attention by layer",
    ),
    (
      "add_cross_attention",
      f["add_cross_attention"] is False,
      "the project's GPT-2 has no cross-attention",
    ),
    (
      "tie_word_embeddings",
      f["tie_word_embeddings"] is True,
      "the LM head is the token embedding table",
    ),
  )
  for name, ok, why in checks:
    if not ok:
      raise PretrainError(f"config.json {name}={f[name]!r} is not supported: {why}")
  for name in (*_FIELDS, "embd_pdrop"):
    if isinstance(f[name], bool) or not isinstance(f[name], (int, float)):
      raise PretrainError(f"config.json {name}={f[name]!r} must be a number")
  if f["n_inner"] is not None and (
    isinstance(f["n_inner"], bool) or not isinstance(f["n_inner"], int)
  ):
    raise PretrainError(f"config.json n_inner={f['n_inner']!r} must be an integer or null")
  if f["embd_pdrop"] != f["resid_pdrop"]:
    raise PretrainError(
      f"config.json embd_pdrop={f['embd_pdrop']} differs from resid_pdrop={f['resid_pdrop']}: "
      "the project's GPT-2 has one dropout_rate for both"
    )
  return f


def _check_layers(t: HfTensors, prefix: str, model: dict) -> None:
  steps.check_layer_count(t, re.escape(prefix) + r"h\.(\d+)\.", model["num_layers"], "n_layer")


def _skip_tied_head(t: HfTensors, params: dict, prefix: str) -> None:
  """A stored lm_head.weight must be the token embedding table."""
  steps.skip_tied(
    t,
    "lm_head.weight",
    params["wte"]["embedding"],
    f"{prefix}wte.weight",
    "an untied LM head is not supported (the project's GPT-2 head is the token embedding table)",
  )


# The family interface (see pretrain/convert/__init__.py).


def project_sections(hf_config: dict, t: HfTensors) -> dict:
  """The project config sections of an HF GPT2LMHeadModel folder."""
  del t  # The structure is fixed.
  f = hf_fields(hf_config)
  model = {ours: f[hf] for hf, ours in _FIELDS.items()}
  model["intermediate_size"] = f["n_inner"] or 4 * f["n_embd"]
  model["attention"] = {
    "position": "learned"
  }  # wpe; the other attention fields keep their (HF's) defaults.
  steps.buildable(gpt2_model.Gpt2Config, model)
  return {
    "task": {"name": TASK},
    "model": model,
    "data": {"max_seq_length": min(1024, model["max_position_embeddings"])},
  }


def hf_to_params(t: HfTensors, hf_config: dict, model: dict) -> tuple[dict, list[str]]:
  """(params, the param subtrees left to a fresh init: none)."""
  del hf_config
  prefix = _prefix(t)
  _check_layers(t, prefix, model)
  params = read_params(t, entries(model, prefix))
  _read_attention(t, params, model, prefix)
  _skip_tied_head(t, params, prefix)
  for name in t.names():
    if _BUFFERS.search(name):
      t.skip(name)
  return params, []


def complete_model(model: dict) -> dict:
  """A config's model section with every field, the missing ones at the model's defaults."""
  return dataclasses.asdict(gpt2_model.Gpt2Config.from_dict(model))


def params_to_hf(
  params: dict, model: dict, special_ids: dict, base: dict | None
) -> tuple[dict, dict]:
  """(config.json, tensors) of HF's GPT2LMHeadModel."""
  check_attention(model, "learned", "GPT2LMHeadModel")
  config = steps.hf_config(base, model, _FIELDS)
  config.update(
    architectures=["GPT2LMHeadModel"],
    model_type="gpt2",
    n_inner=model["intermediate_size"],
    embd_pdrop=model["dropout_rate"],
    activation_function="gelu_new",
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False,
    tie_word_embeddings=True,
    dtype="float32",
  )
  ids = dict(special_ids)
  if base is None:  # Trained here: the end-of-text id ends a document and precedes the next one.
    ids.update(bos_token_id=ids["eos_token_id"])
  config.update(ids)
  tensors = write_tensors(params, entries(model, PREFIX))
  _write_attention(params, model, tensors)
  return config, tensors


def model_config(model: dict) -> gpt2_model.Gpt2Config:
  return gpt2_model.Gpt2Config.from_dict(dict(model, scan_layers=False, remat_policy="none"))


def abstract_params(model: dict):
  """The unscanned param tree of `model` as ShapeDtypeStructs."""
  return nn.unbox(gpt2_model.abstract_params(model_config(model), seq_len=1))


def init_heads(model: dict, seed: int) -> dict:
  """GPT-2 has no head of its own (the LM head is wte), so there is nothing to initialize."""
  del model, seed
  return {}
