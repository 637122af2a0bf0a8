"""Hugging Face model folders on disk: config.json and weights, read and written without torch.

Weights are read with safetensors' numpy API (`model.safetensors`, or the shards
named by `model.safetensors.index.json`). A folder with only
`pytorch_model.bin` (a pickle) is read only when the caller allows it, and then
with `torch.load(weights_only=True)`. Floating-point tensors come back as
float32 numpy arrays.
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator

import ml_dtypes  # pylint: disable=unused-import  # Registers bfloat16 with numpy for safetensors.
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from pretrain import paths
from pretrain.errors import PretrainError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"


def read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except FileNotFoundError:
    raise PretrainError(f"{what}: {path} does not exist") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainError(f"{what}: cannot read {path}: {e}") from None
  if not isinstance(value, dict):
    raise PretrainError(f"{what}: {path} does not hold a JSON object")
  return value


def read_config(hf_dir: str) -> dict:
  """The folder's config.json."""
  if not os.path.isdir(hf_dir):
    raise PretrainError(f"--hf_dir {hf_dir} is not a directory")
  return read_json(os.path.join(hf_dir, CONFIG), "HF config")


def _as_float32(x: np.ndarray) -> np.ndarray:
  if np.issubdtype(x.dtype, np.floating) or x.dtype == ml_dtypes.bfloat16:
    return np.asarray(x, np.float32)
  return x  # Integer buffers (position_ids) are left to the family to ignore or reject.


def _read_safetensors(paths: list[str]) -> dict[str, np.ndarray]:
  tensors = {}
  for path in paths:
    try:
      with safe_open(path, framework="numpy") as f:
        for name in f.keys():
          tensors[name] = _as_float32(f.get_tensor(name))
    except FileNotFoundError:
      raise PretrainError(f"weights file {path} does not exist") from None
    except (OSError, ValueError, TypeError, SafetensorError) as e:
      raise PretrainError(f"cannot read safetensors file {path}: {e}") from None
  return tensors


def _read_pickle(path: str) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel  # Only for --allow_pickle.

  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # Unpickling errors have many types.
    raise PretrainError(f"cannot read {path} with torch.load(weights_only=True): {e}") from None
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise PretrainError(f"{path} does not hold a state dict of tensors")
  return {
    k: _as_float32((v.float() if v.is_floating_point() else v).numpy()) for k, v in state.items()
  }


def read_tensors(hf_dir: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Every tensor of the folder by name (float32 for floating point)."""
  single = os.path.join(hf_dir, SAFETENSORS)
  index = os.path.join(hf_dir, SAFETENSORS_INDEX)
  pickle = os.path.join(hf_dir, PICKLE)
  if os.path.isfile(single):
    return _read_safetensors([single])
  if os.path.isfile(index):
    weight_map = read_json(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
      raise PretrainError(f"{index} has no weight_map")
    return _read_safetensors([os.path.join(hf_dir, f) for f in sorted(set(weight_map.values()))])
  if os.path.isfile(pickle):
    if not allow_pickle:
      raise PretrainError(
        f"{hf_dir} has no {SAFETENSORS}, only {PICKLE} (a pickle, which can run code when loaded); "
        "pass --allow_pickle to read it with torch.load(weights_only=True), or convert it to safetensors"
      )
    return _read_pickle(pickle)
  raise PretrainError(
    f"{hf_dir} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE}"
  )


def write_hf_dir(directory: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
  """config.json + model.safetensors (with the metadata transformers expects)."""
  with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  save_file(arrays, os.path.join(directory, SAFETENSORS), metadata={"format": "pt"})


def check_out_dir(out: str) -> None:
  """`out` must not exist yet, or be an empty directory."""
  if paths.is_remote(out):  # os.path would take a URL for a local folder named "gs:".
    raise PretrainError(
      f"--out {out} is a URL: only local output folders are supported; write locally, then "
      "copy the folder (e.g. gsutil cp -r)"
    )
  if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    raise PretrainError(
      f"--out {out} already exists and is not an empty directory; choose a new one"
    )


@contextlib.contextmanager
def staged_dir(out: str) -> Iterator[str]:
  """A temporary folder beside `out`, renamed to `out` when the block completes and removed if it fails."""
  out = os.path.abspath(out)
  check_out_dir(out)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
  try:
    yield tmp
    check_out_dir(out)
    if os.path.isdir(out):
      os.rmdir(out)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


class HfTensors:
  """A folder's tensors by name. `take` checks each against the shape config.json implies and marks it used,
  so that what is left over at the end (`unused`) can be reported."""

  def __init__(self, tensors: dict[str, np.ndarray], source: str):
    self._tensors = tensors
    self.source = source
    self._used: set[str] = set()
    self._skipped: set[str] = set()

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  def names(self) -> list[str]:
    return sorted(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def take(self, name: str, shape: tuple[int, ...], implied_by: str) -> np.ndarray:
    """The float32 tensor `name`, which must exist with `shape` (what config.json's `implied_by` says)."""
    if name not in self._tensors:
      raise PretrainError(f"{self.source}: tensor {name} is missing")
    x = self._tensors[name]
    if tuple(x.shape) != tuple(shape):
      raise PretrainError(
        f"{self.source}: tensor {name} has shape {tuple(x.shape)} but config.json "
        f"({implied_by}) implies {tuple(shape)}"
      )
    if x.dtype != np.float32:
      raise PretrainError(
        f"{self.source}: tensor {name} has dtype {x.dtype}, expected floating point"
      )
    self._used.add(name)
    return x

  def skip(self, name: str) -> None:
    """Marks a known tensor the project's model has no place for (a buffer, a tied copy)."""
    self._used.add(name)
    self._skipped.add(name)

  def unused(self) -> list[str]:
    return sorted(set(self._tensors) - self._used)

  def skipped(self) -> list[str]:
    return sorted(self._skipped)
