"""Steps that several families' convert.py take alike (see pretrain/convert/__init__.py for the interface)."""

import re

import numpy as np

from pretrain.convert.hf_io import HfTensors
from pretrain.errors import PretrainError

# What transformers writes of itself when it saves a folder: not carried over from a source's config.json.
_NOT_CARRIED = ("torch_dtype", "transformers_version")


def buildable(config_cls, model: dict) -> dict:
  """`model` (a project model section read off config.json), refused unless `config_cls.from_dict` builds it."""
  try:
    config_cls.from_dict(model)
  except PretrainError as e:
    raise PretrainError(f"config.json describes a model the project cannot build: {e}") from None
  return model


def check_layer_count(t: HfTensors, layer: str, num_layers: int, field: str) -> None:
  """A tensor of a layer config.json does not have gets its own message; `layer` (a regex) matches a tensor
  name's start, its group 1 the layer number; `field` names config.json's layer count."""
  pattern = re.compile(layer)
  for name in t.names():
    m = pattern.match(name)
    if m and int(m.group(1)) >= num_layers:
      raise PretrainError(
        f"{t.source}: tensor {name} is layer {m.group(1)} but config.json {field}={num_layers}"
      )


def skip_tied(t: HfTensors, name: str, value: np.ndarray, source: str, why: str) -> None:
  """Skips a stored copy `name` of a tied tensor (the param `value`, read from HF's `source`), which must equal
  it; `why` ends the error when it does not."""
  if name in t:
    t.skip(name)
    if t.shape(name) != value.shape or not np.array_equal(t.take(name, value.shape, ""), value):
      raise PretrainError(f"{t.source}: tensor {name} differs from {source}: {why}")


def hf_config(base: dict | None, model: dict, fields: dict[str, str]) -> dict:
  """config.json with `fields` (HF field -> project model field) of `model`, over `base` (the source's
  config.json, when converted from HF)."""
  config = {k: v for k, v in (base or {}).items() if k not in _NOT_CARRIED}
  config.update({hf: model[ours] for hf, ours in fields.items()})
  return config
