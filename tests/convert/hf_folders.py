"""What the families' HF conversion tests (tests/families/*/test_convert.py) share: random-weight HF folders,
padded inputs, HF forward passes, edited copies of a folder, training workdirs of converted params, and the checks
every family makes of a conversion (a re-import is bit-exact, transformers loads an export, bad input is refused).

A test module imports it by putting tests/convert/ on sys.path:
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "convert"))
  from hf_folders import ...
"""

import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from pretrain import convert
from pretrain.checkpoint import Checkpointer
from pretrain.convert import checkpoints
from pretrain.errors import PretrainError
from pretrain.training.step import TrainState

TOL = 1e-4


def perturb_and_save(model, path):
  """model with every weight perturbed, so that no bias or norm is trivial, saved as safetensors in path."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  return model


def padded(rng, vocab, length, pad_id=0, low=5):
  """ids (drawn from [low, vocab)) and mask of 3 sequences of 12, 7 and 3 real tokens, right-padded with pad_id."""
  mask = (np.arange(length)[None] < np.array([[12], [7], [3]])).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(low, vocab, (3, length)), pad_id).astype(np.int32)
  return ids, mask


def hf_outputs(model, **inputs):
  """model(**inputs) without gradients, every input (an int array, or None) passed as a long tensor."""
  with torch.no_grad():
    return model(
      **{k: None if v is None else torch.tensor(v, dtype=torch.long) for k, v in inputs.items()}
    )


@functools.cache
def _jitted_apply(module_cls, cfg):
  return jax.jit(module_cls(cfg).apply)


def project_outputs(module_cls, cfg, params, *args):
  """module_cls(cfg).apply({"params": params}, *args) as a numpy array, jitted once per config."""
  return np.asarray(_jitted_apply(module_cls, cfg)({"params": params}, *args))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def params_equal(a, b):
  fa, fb = checkpoints.flatten(a), checkpoints.flatten(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def read_json(folder, name):
  with open(os.path.join(folder, name)) as f:
    return json.load(f)


def hf_and_converted(tmp_path_factory, name, make_hf):
  """(the HF model make_hf(folder) saves, that folder, the folder convert.from_hf makes of it), in a new folder."""
  root = tmp_path_factory.mktemp(name)
  model = make_hf(root / "hf")
  convert.from_hf(str(root / "hf"), str(root / "converted"))
  return model, str(root / "hf"), str(root / "converted")


def reload(cls, folder):
  """cls.from_pretrained(folder) in eval mode, once transformers found every weight it expects and no other."""
  model, info = cls.from_pretrained(str(folder), output_loading_info=True)
  assert not any(info.values()), info  # No missing, unexpected or mismatched keys.
  return model.eval()


def assert_converts_to(hf_dir, out, converted, **kwargs):
  """convert.from_hf(hf_dir, out) gives bit for bit the params of the folder `converted`; returns its source."""
  source = convert.from_hf(str(hf_dir), str(out), **kwargs)
  assert params_equal(convert.load_params(converted), convert.load_params(str(out)))
  return source


def import_scanned(hf_dir, out, converted):
  """The params of convert.from_hf(hf_dir, out, scan_layers=True): those of `converted`, stacked."""
  convert.from_hf(hf_dir, str(out), scan_layers=True)
  assert convert.load_config(str(out)).model.scan_layers
  params = convert.load_params(str(out))
  assert params_equal(checkpoints.unstack_layers(params), convert.load_params(converted))
  return params


def save_checkpoint(workdir, step, params, config, opt_state=None, data_state=None, keep=1):
  """A training workdir with one checkpoint: TrainState(step, params, opt_state) and the run's config dict."""
  ckpt = Checkpointer(str(workdir), every_steps=1, keep=keep, async_save=False)
  state = TrainState(
    step=np.int32(step), params=params, opt_state={} if opt_state is None else opt_state
  )
  ckpt.save(step, state, data_state or {}, config, {})
  ckpt.close()
  return str(workdir)


def run_config(out, tokenizer_vocab_size):
  """The converted folder's config as a training run saves it: vocab_size 0 (the tokenizer's), float32."""
  config = convert.load_config(out).to_dict()
  config["model"].update(vocab_size=0, dtype="float32")
  config["_tokenizer"] = {"vocab_size": tokenizer_vocab_size, "fingerprint": "f", "path": "p"}
  return config


# Bad input: one clear error, nothing written.


def edited(src, dst, config=None, drop=(), add=None):
  """A copy of an HF folder with config.json fields replaced (None: removed) and tensors dropped or added."""
  shutil.copytree(src, dst)
  if config:
    with open(os.path.join(dst, "config.json")) as f:
      c = json.load(f)
    c.update(config)
    c = {k: v for k, v in c.items() if k not in config or v is not None}
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(c, f)
  if drop or add:
    path = os.path.join(dst, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    tensors.update(add or {})
    save_file(tensors, path, metadata={"format": "pt"})
  return str(dst)


def assert_refused(hf_dir, tmp_path, edit, message):
  """convert.from_hf of edited(hf_dir, **edit) fails with a PretrainError matching message and writes nothing."""
  src = edited(hf_dir, tmp_path / "bad", **edit)
  out = tmp_path / "out" / "converted"
  with pytest.raises(PretrainError, match=message):
    convert.from_hf(src, str(out))
  assert not (tmp_path / "out").exists()  # Nothing written, not even the parent.
