"""T5 v1.1 <-> Hugging Face transformers' T5ForConditionalGeneration.

One table (`entries`) maps every HF tensor to a project param; both directions
read it. With s = encoder or decoder:

  shared.weight                                    shared/embedding
  {s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                   {s}/relative_attention_bias/embedding
  {s}.block.{i}.layer.0.SelfAttention.{q,k,v,o}    {s}/block_{i}/layer_0/SelfAttention/{query,key,value,out}
  {s}.block.{i}.layer.0.layer_norm                 {s}/block_{i}/layer_0/layer_norm
  decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}, .layer_norm
                                                   decoder/block_{i}/layer_1/EncDecAttention/..., layer_norm
  {s}.block.{i}.layer.{1|2}.DenseReluDense.{wi_0,wi_1,wo}, .layer_norm
                                                   {s}/block_{i}/layer_{1|2}/DenseReluDense/..., layer_norm
  {s}.final_layer_norm                             {s}/final_layer_norm
  lm_head.weight                                   lm_head/kernel

Linear weights [out, in] are transposed kernels [in, out]; a norm's weight is
its scale; the relative bias table is [buckets, heads] on both sides. HF
keeps the table in block 0 and shares it with the stack's other blocks; the
project keeps it once per stack. `{s}.embed_tokens.weight` (older files) must
equal shared.weight, and the decoder's cross-attention table some old files
hold is unused by HF: both are skipped.

Which T5: v1.1 only, i.e. `feed_forward_proj="gated-gelu"` (HF's 'gelu_new',
the tanh GELU, as the project's) and logits without T5 v1.0's rescaling of
the decoder output by d_model**-0.5. config.json says which: transformers 5
reads `scale_decoder_outputs`, and without it rescales unless
`tie_word_embeddings` is false (the published v1.1 checkpoints say false).
The head: lm_head.weight when stored; transformers 5 ties it to shared.weight
and leaves it out of the file, and then shared.weight is copied into the
project's untied lm_head. Export writes the published layout
(tie_word_embeddings false, lm_head.weight stored). Neither side scales the
attention logits by 1/sqrt(d_kv).

The converted config is pretrain.families.t5.config.t5_config() with the checkpoint's
shape and dropout, so its training recipe (bfloat16 compute among it) is
T5's. HF's model has no sentinel count: task.extra_ids keeps its
100, the top rows of the vocabulary, and tokenizer.vocab_size the rows below
them (HF's own t5 tokenizers put their 100 sentinels below 28 unused rows).
"""

import dataclasses
import re

import flax.linen as nn
import numpy as np

from pretrain.families.bert.convert import Entry, check_attention, read_params, write_tensors
from pretrain.convert import steps
from pretrain.convert.hf_io import HfTensors
from pretrain.errors import PretrainError
from pretrain.families.t5 import model as t5_model
from pretrain.families.t5 import task as t5_task
from pretrain.families.t5.config import t5_config

TASK = "t5"
ARCHITECTURES = ("T5ForConditionalGeneration",)
base_config = t5_config  # The converted config's defaults.

# transformers' T5Config defaults, for fields a config.json leaves out.
HF_DEFAULTS = dict(
  vocab_size=32128,
  d_model=512,
  d_kv=64,
  d_ff=2048,
  num_layers=6,
  num_decoder_layers=None,
  num_heads=8,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
  dropout_rate=0.1,
  layer_norm_epsilon=1e-6,
  feed_forward_proj="relu",
  is_encoder_decoder=True,
  pad_token_id=0,
  eos_token_id=1,
  decoder_start_token_id=0,
)
# HF config field -> T5Config field (the relative bias's two in its attention section).
_FIELDS = dict(
  vocab_size="vocab_size",
  d_model="hidden_size",
  d_kv="head_dim",
  d_ff="intermediate_size",
  num_layers="num_layers",
  num_decoder_layers="num_decoder_layers",
  num_heads="num_heads",
  dropout_rate="dropout_rate",
  layer_norm_epsilon="layer_norm_eps",
)
_ATTENTION_FIELDS = dict(
  relative_attention_num_buckets="relative_num_buckets",
  relative_attention_max_distance="relative_max_distance",
)
_HEAD = "lm_head.weight"
_SKIPPED = re.compile(
  r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"
)
_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))
_FEED_FORWARD = ("wi_0", "wi_1", "wo")


def entries(model: dict) -> list[Entry]:
  """Every HF tensor <-> project param of a T5 v1.1 model (`model`: T5Config fields)."""
  v, d, f = model["vocab_size"], model["hidden_size"], model["intermediate_size"]
  inner = model["num_heads"] * model["head_dim"]
  buckets, heads = model["attention"]["relative_num_buckets"], model["num_heads"]
  hd = f"d_model={d}"  # The shapes are explained in config.json's names.
  ha = f"d_model={d}, num_heads={heads}, d_kv={model['head_dim']}"
  hf = f"d_model={d}, d_ff={f}"

  def linear(name, path, n_in, n_out, implied_by):
    return Entry(f"{name}.weight", path + ("kernel",), (n_in, n_out), True, implied_by)

  def norm(name, path):
    return Entry(f"{name}.weight", path + ("scale",), (d,), False, hd)

  def attention(name, path):
    shapes = {"q": (d, inner), "k": (d, inner), "v": (d, inner), "o": (inner, d)}
    return [linear(f"{name}.{a}", path + (b,), *shapes[a], ha) for a, b in _ATTENTION]

  def feed_forward(name, path):
    shapes = {"wi_0": (d, f), "wi_1": (d, f), "wo": (f, d)}
    return [linear(f"{name}.{w}", path + (w,), *shapes[w], hf) for w in _FEED_FORWARD]

  out = [Entry("shared.weight", ("shared", "embedding"), (v, d), False, f"vocab_size={v}, {hd}")]
  for stack, num_blocks, layers in (
    ("encoder", model["num_layers"], ("SelfAttention", None)),
    ("decoder", model["num_decoder_layers"], ("SelfAttention", "EncDecAttention", None)),
  ):
    out.append(
      Entry(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (stack, "relative_attention_bias", "embedding"),
        (buckets, heads),
        False,
        f"relative_attention_num_buckets={buckets}, num_heads={heads}",
      )
    )
    for i in range(num_blocks):
      for n, kind in enumerate(layers):
        name, path = f"{stack}.block.{i}.layer.{n}", (stack, f"block_{i}", f"layer_{n}")
        if kind is None:
          out += feed_forward(f"{name}.DenseReluDense", path + ("DenseReluDense",))
        else:
          out += attention(f"{name}.{kind}", path + (kind,))
        out.append(norm(f"{name}.layer_norm", path + ("layer_norm",)))
    out.append(norm(f"{stack}.final_layer_norm", (stack, "final_layer_norm")))
  return out


def _head_entry(model: dict) -> Entry:
  v, d = model["vocab_size"], model["hidden_size"]
  return Entry(_HEAD, ("lm_head", "kernel"), (d, v), True, f"vocab_size={v}, d_model={d}")


def scales_decoder_output(hf_config: dict) -> bool:
  """Whether transformers multiplies the decoder output by d_model**-0.5 (T5 v1.0) for this config.json."""
  if hf_config.get("scale_decoder_outputs") is not None:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings") is not False


def hf_fields(hf_config: dict) -> dict:
  """config.json over transformers' defaults, with the fields the project's T5 cannot express rejected."""
  f = dict(HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None})
  if f["num_decoder_layers"] is None:
    f["num_decoder_layers"] = f["num_layers"]
  if f["feed_forward_proj"] != "gated-gelu":
    raise PretrainError(
      f"config.json feed_forward_proj={f['feed_forward_proj']!r} is not supported: the "
      "project's T5 is v1.1, whose feed-forward is 'gated-gelu'"
    )
  if scales_decoder_output(hf_config):
    raise PretrainError(
      f"config.json tie_word_embeddings={hf_config.get('tie_word_embeddings')!r}, scale_decoder_outputs="
      f"{hf_config.get('scale_decoder_outputs')!r} is not supported: transformers then rescales the decoder "
      "output by d_model**-0.5 (T5 v1.0), which the project's T5 v1.1 does not"
    )
  if f["is_encoder_decoder"] is not True:
    raise PretrainError(
      f"config.json is_encoder_decoder={f['is_encoder_decoder']!r} is not supported: the "
      "project's T5 is an encoder-decoder"
    )
  for name in (*_FIELDS, *_ATTENTION_FIELDS):
    if isinstance(f[name], bool) or not isinstance(f[name], (int, float)):
      raise PretrainError(f"config.json {name}={f[name]!r} must be a number")
  return f


def _check_layers(t: HfTensors, model: dict) -> None:
  counts = {
    "encoder": ("num_layers", model["num_layers"]),
    "decoder": ("num_decoder_layers", model["num_decoder_layers"]),
  }
  for name in t.names():
    m = re.match(r"(encoder|decoder)\.block\.(\d+)\.", name)
    if m and int(m.group(2)) >= counts[m.group(1)][1]:
      field, n = counts[m.group(1)]
      raise PretrainError(
        f"{t.source}: tensor {name} is {m.group(1)} block {m.group(2)} but config.json {field}={n}"
      )


def _skip_tied_embeddings(t: HfTensors, shared: np.ndarray) -> None:
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    steps.skip_tied(
      t, name, shared, "shared.weight", "T5 embeds both stacks' tokens with shared.weight"
    )


# The family interface (see pretrain/convert/__init__.py).


def project_sections(hf_config: dict, t: HfTensors) -> dict:
  """The project config sections of an HF T5ForConditionalGeneration (v1.1) folder."""
  del t  # The structure is fixed.
  f = hf_fields(hf_config)
  model = {ours: f[hf] for hf, ours in _FIELDS.items()}
  # The other attention fields keep their (HF's) defaults.
  model["attention"] = dict(
    {ours: f[hf] for hf, ours in _ATTENTION_FIELDS.items()}, position="relative_bias"
  )
  steps.buildable(t5_model.T5Config, model)
  extra_ids = int(base_config().task.extra_ids)
  return {
    "task": {"name": TASK},
    "model": model,
    "tokenizer": {"vocab_size": model["vocab_size"] - extra_ids},
  }


def hf_to_params(t: HfTensors, hf_config: dict, model: dict) -> tuple[dict, list[str]]:
  """(params, the param subtrees left to a fresh init: none)."""
  _check_layers(t, model)
  params = read_params(t, entries(model))
  shared = params["shared"]["embedding"]
  if _HEAD not in t and hf_config.get("tie_word_embeddings") is not False:
    params["lm_head"] = {
      "kernel": np.ascontiguousarray(shared.T)
    }  # Tied by transformers 5: [embed, vocab].
  else:
    params.update(read_params(t, [_head_entry(model)]))
  _skip_tied_embeddings(t, shared)
  for name in t.names():
    if _SKIPPED.match(name):
      t.skip(name)
  return params, []


def complete_model(model: dict) -> dict:
  """A config's model section with every field, the missing ones at the model's defaults."""
  return dataclasses.asdict(t5_model.T5Config.from_dict(model))


def params_to_hf(
  params: dict, model: dict, special_ids: dict, base: dict | None
) -> tuple[dict, dict]:
  """(config.json, tensors) of HF's T5ForConditionalGeneration in T5 v1.1's published layout."""
  check_attention(model, "relative_bias", "T5ForConditionalGeneration")
  config = steps.hf_config(base, model, _FIELDS)
  config.update({hf: model["attention"][ours] for hf, ours in _ATTENTION_FIELDS.items()})
  config.update(
    architectures=["T5ForConditionalGeneration"],
    model_type="t5",
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    is_encoder_decoder=True,
    tie_word_embeddings=False,
    scale_decoder_outputs=False,
    dtype="float32",
  )
  pad = special_ids["pad_token_id"]
  config.update(
    pad_token_id=pad,
    eos_token_id=special_ids["eos_token_id"],
    decoder_start_token_id=config.get("decoder_start_token_id", pad),
  )
  return config, write_tensors(params, entries(model) + [_head_entry(model)])


def model_config(model: dict) -> t5_model.T5Config:
  return t5_model.T5Config.from_dict(dict(model, scan_layers=False, remat_policy="none"))


def model_vocab_size(config: dict, tokenizer_vocab: int) -> int:
  """A run's model vocabulary when model.vocab_size is 0: pieces + sentinels, rounded up (the task's rule)."""
  return t5_task.model_vocab_size(tokenizer_vocab, int(config["task"]["extra_ids"]))


def abstract_params(model: dict):
  """The unscanned param tree of `model` as ShapeDtypeStructs."""
  return nn.unbox(t5_model.abstract_params(model_config(model), inputs_length=1, targets_length=1))


def init_heads(model: dict, seed: int) -> dict:
  """Every T5 folder has the head (or its tied copy), so there is nothing to initialize."""
  del model, seed
  return {}
