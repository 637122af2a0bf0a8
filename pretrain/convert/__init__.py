"""Checkpoint conversion between Hugging Face transformers models and this project.

  python -m pretrain.convert from-hf --hf_dir DIR --out OUT [--allow_pickle] [--scan_layers]
  python -m pretrain.convert to-hf --ckpt CKPT --out OUT [--step N]

`from-hf` reads a local HF folder (config.json + model.safetensors) and writes
a converted folder: the params as an orbax checkpoint, the project config
(config.json, and config.py for `--config=OUT/config.py`) and convert.json
(the source). When the folder has a tokenizer.json or vocab.txt (with its
tokenizer_config.json), it is copied beside them and the config's
tokenizer.path names it, so training from the converted folder uses the
model's own vocabulary; the task built on it must accept it (vocabulary size,
special tokens), or nothing is written. `to-hf` writes config.json + model.safetensors that
`transformers.AutoModel*.from_pretrained(OUT)` loads, from a converted folder
or a training workdir (scanned layers are unstacked). `load_params`
(checkpoints.load_params) is what a train loop calls to start from converted
(or any saved) params.

Bad input (an unsupported architecture, a missing tensor, a shape that
disagrees with config.json, a vocabulary mismatch) raises PretrainError naming
the field or tensor, and nothing is written: output goes to a temporary folder
renamed into place at the end.

Families: each registered family (pretrain/families) whose package has a
`convert.py` converts; its name is both HF's `model_type` and the project's
`task.name`, its Task's `layer_stacks` name its layers, and the module has
  TASK, ARCHITECTURES                        project task, HF architectures read
  project_sections(hf_config, tensors)       -> {"task": .., "model": .., "data": ..} config overrides
  hf_to_params(tensors, hf_config, model)    -> (params, subtrees to initialize fresh)
  params_to_hf(params, model, special_ids, base_hf_config) -> (config.json dict, {name: array})
  complete_model(model)                      the model section with every field (defaults filled in)
  abstract_params(model)                     the unscanned param tree (ShapeDtypeStructs)
  init_heads(model, seed)                    fresh params of the heads an HF model may lack
and optionally
  base_config()                              the config the sections override (default: base_config())
  model_vocab_size(config, tokenizer_vocab)  the model vocabulary of a run whose model.vocab_size is 0
                                             (default: the tokenizer's)
A family that returns a "tokenizer" section sets its vocab_size; else it is the model's.
`tensors` is an hf_io.HfTensors: `take` checks each tensor's shape and what
stays unused is an error.
"""

import importlib
import importlib.util
import logging
import os
import shutil

import ml_collections

from pretrain import families
from pretrain.config import base_config
from pretrain.convert import checkpoints
from pretrain.data import special_tokens
from pretrain.errors import PretrainError

# hf_io (safetensors) and hf_tokenizer (tokenizers) are imported where HF folders are read or written: a
# run's init_from imports this package for checkpoints.load_params only.
_logger = logging.getLogger(__name__)
load_params = checkpoints.load_params

FORMAT = "pretrain-convert-v1"
_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def family(name: str, what: str):
  """The conversion module (`convert.py`) of a registered family that has one."""
  supported = [n for n in families.FAMILIES if _has_converter(n)]
  if name not in supported:
    raise PretrainError(
      f"{what}={name!r} is not supported; supported: {', '.join(map(repr, supported))}"
    )
  return families.family_part(name, "convert", what)


def _has_converter(name: str) -> bool:
  module = families.FAMILIES[name].split(":")[0]
  return importlib.util.find_spec(module.rpartition(".")[0] + ".convert") is not None


def _hf_family(hf_config: dict):
  model_type = hf_config.get("model_type")
  module = family(model_type, "config.json model_type")
  archs = hf_config.get("architectures") or []
  if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in module.ARCHITECTURES:
    raise PretrainError(
      f"config.json architectures={archs!r} is not supported for model_type {model_type!r}; "
      f"supported: {', '.join(module.ARCHITECTURES)}"
    )
  return module


def _project_config(module, sections: dict) -> dict:
  config = getattr(module, "base_config", base_config)()
  for name, values in sections.items():
    if name in config:
      config[name].update(values)
    else:  # E.g. the finetune section (head, labels) of a sequence classifier.
      config[name] = values
  if "tokenizer" not in sections:
    config.tokenizer.vocab_size = config.model.vocab_size
  return config.to_dict()


def _fill_fresh(params: dict, fresh: list[str], module, model: dict) -> dict:
  if not fresh:
    return params
  init = module.init_heads(model, seed=0)
  _logger.warning("the HF model has no %s: initialized fresh", ", ".join(fresh))
  return dict(params, **{name: init[name] for name in fresh})


def from_hf(
  hf_dir: str, out: str, *, allow_pickle: bool = False, scan_layers: bool = False
) -> dict:
  """Converts the HF folder `hf_dir` into the converted folder `out`; returns convert.json's contents."""
  from pretrain.convert import hf_io  # pylint: disable=import-outside-toplevel

  hf_io.check_out_dir(out)
  hf_config = hf_io.read_config(hf_dir)
  module = _hf_family(hf_config)
  tensors = hf_io.HfTensors(hf_io.read_tensors(hf_dir, allow_pickle), source=hf_dir)
  sections = module.project_sections(hf_config, tensors)
  model = sections["model"]
  params, fresh = module.hf_to_params(tensors, hf_config, model)
  unused = tensors.unused()
  if unused:
    more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
    raise PretrainError(
      f"{hf_dir}: unexpected tensor {unused[0]}{more}: {hf_config['architectures'][0]} "
      "has no such weight"
    )
  params = _fill_fresh(params, fresh, module, model)
  checkpoints.check_shapes(
    params, _abstract_params(module, model, sections.get("finetune")), hf_dir
  )
  if scan_layers:
    params = checkpoints.stack_layers(params, families.layer_stacks(hf_config["model_type"]))
    model["scan_layers"] = True
  source = {
    "format": FORMAT,
    "family": hf_config["model_type"],
    "architecture": hf_config["architectures"][0],
    "hf_dir": os.path.abspath(hf_dir),
    "hf_config": hf_config,
    "special_ids": {
      k: hf_config.get(k, getattr(module, "HF_DEFAULTS", {}).get(k)) for k in _SPECIAL_IDS
    },
    "initialized_fresh": fresh,
    "skipped_tensors": tensors.skipped(),  # Buffers, tied copies, weights the architecture does not use.
  }
  config = _project_config(module, sections)
  tokenizer_files = _hf_tokenizer(hf_dir, config)
  source["tokenizer"] = tokenizer_files[0] if tokenizer_files else None
  with hf_io.staged_dir(out) as tmp:
    checkpoints.save_converted(tmp, params, config, source)
    for path in tokenizer_files:
      shutil.copyfile(os.path.join(hf_dir, path), os.path.join(tmp, path))
  return source


def _hf_tokenizer(hf_dir: str, config: dict) -> list[str]:
  """The HF folder's tokenizer files to copy (tokenizer first); points config's tokenizer at it.

  The task is built on the tokenizer here, so a vocabulary the model cannot
  train with (size, missing special tokens) is refused before anything is written.
  """
  from pretrain.data import hf_tokenizer  # pylint: disable=import-outside-toplevel

  names = [n for n in hf_tokenizer.FILES if os.path.isfile(os.path.join(hf_dir, n))][:1]
  if not names:
    _logger.warning(
      "%s has no %s: the converted config trains with a new sentencepiece vocabulary of the "
      "model's size",
      hf_dir,
      " or ".join(hf_tokenizer.FILES),
    )
    return []
  tok = hf_tokenizer.HfTokenizer(os.path.join(hf_dir, names[0]))
  config["tokenizer"].update(path=names[0], vocab_size=tok.vocab_size)
  try:
    families.get_task(ml_collections.ConfigDict(config), tok)
  except PretrainError as e:
    raise PretrainError(f"{tok.path} does not fit the model: {e}") from None
  if os.path.isfile(os.path.join(hf_dir, hf_tokenizer.CONFIG)):
    names.append(hf_tokenizer.CONFIG)
  return names


def _abstract_params(module, model: dict, head: dict | None):
  """The family's param tree of `model`, with the sequence classification head of a finetune section."""
  if not head:
    return module.abstract_params(model)
  if head.get("head") not in ("pooled", "first_token", "mean"):
    raise PretrainError(f"the checkpoint's finetune.head={head.get('head')!r} is not a known head")
  return module.abstract_params(model, head)


def _special_ids(source: dict, config: dict) -> dict:
  """The pad/bos/eos ids of the checkpoint's vocabulary: HF's for a converted folder, else those of the
  tokenizer the run trained with (the project's layout for runs saved before they were recorded)."""
  if source.get("special_ids"):
    return dict(source["special_ids"])
  ids = (config.get("_tokenizer") or {}).get("special_ids") or {
    "pad": special_tokens.PAD_ID,
    "cls": special_tokens.CLS_ID,
    "eos": special_tokens.SEP_ID,
  }
  bos = ids.get("cls", ids.get("eos"))
  return {"pad_token_id": ids.get("pad"), "bos_token_id": bos, "eos_token_id": ids.get("eos")}


def _model_section(config: dict, module) -> dict:
  model = dict(config.get("model") or {})
  if not model:
    raise PretrainError("the checkpoint's config has no model section")
  if not model.get("vocab_size"):  # 0: follows the tokenizer recorded with the checkpoint.
    vocab = (config.get("_tokenizer") or {}).get("vocab_size") or config["tokenizer"]["vocab_size"]
    model["vocab_size"] = (
      module.model_vocab_size(config, vocab) if hasattr(module, "model_vocab_size") else vocab
    )
  return module.complete_model(model)  # A training config may leave fields at the model's defaults.


def to_hf(ckpt: str, out: str, *, step: int | None = None) -> dict:
  """Writes the params of `ckpt` (a converted folder or a training workdir) as an HF folder `out`.

  Returns the written config.json's contents.
  """
  from pretrain.convert import hf_io  # pylint: disable=import-outside-toplevel

  hf_io.check_out_dir(out)
  directory, key, config, source = checkpoints.locate(ckpt, step)
  module = family((config.get("task") or {}).get("name"), "the checkpoint's task.name")
  params = checkpoints.read_numpy(directory, key)
  model = _model_section(config, module)
  stacks = checkpoints.family_stacks(config)
  if checkpoints.is_scanned(params, stacks):
    params = checkpoints.unstack_layers(params, stacks)
  model.update(scan_layers=False, remat_policy="none")
  head = config.get("finetune")  # A fine-tuned sequence classifier (pretrain/finetune).
  if head and head.get("head") == "text_to_text":  # A fine-tuned T5 is a T5 as pretrained.
    head = None
  checkpoints.check_shapes(params, _abstract_params(module, model, head), ckpt)
  args = (params, model, _special_ids(source, config), source.get("hf_config"))
  hf_config, tensors = module.params_to_hf(*args, head=head) if head else module.params_to_hf(*args)
  with hf_io.staged_dir(out) as tmp:
    hf_io.write_hf_dir(tmp, hf_config, tensors)
  return hf_config


def load_config(path: str) -> ml_collections.ConfigDict:
  """The project config of a converted folder (as its config.py returns it), local or a URL.

  A relative tokenizer.path is the tokenizer copied into the folder (in a
  folder at a URL, a URL too, which a run cannot open: tokenizer files are local).
  """
  config = ml_collections.ConfigDict(
    checkpoints.read_json(os.path.join(path, checkpoints.CONFIG), "converted model config")
  )
  tok_path = config.tokenizer.get("path", "")
  if tok_path and not os.path.isabs(tok_path):
    config.tokenizer.path = os.path.join(checkpoints.folder(path), tok_path)
  return config
