"""The project side of conversion: params on disk, and the layer layouts of scanned models.

Two kinds of folders hold params:

  a converted folder (written by `from-hf`)
    params/        orbax PyTree checkpoint of the params (float32, the model's own tree)
    config.json    the project config (as a training checkpoint's `config` item)
    config.py      `get_config()` returning that config, for `--config=<folder>/config.py`
    convert.json   the source: family, HF architecture and config, special token ids

  a training workdir `<workdir>/checkpoints/<step>/{state,config,...}` (pretrain/checkpoint.py),
    whose `state` item holds `params` next to the optimizer state; only the
    params are read.

Both are read from a local folder or a URL (gs://..., through etils.epath and
orbax's own GCS support), so a run can start from a converted folder copied to
a bucket or from another run's gs:// workdir (`load_params`, all that a train
loop's init_from needs). They are written locally only.
"""

import json
import os
import re
from typing import Any

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from pretrain import families
from pretrain import paths
from pretrain.errors import PretrainError

PARAMS = "params"
CONFIG = "config.json"
CONFIG_PY = "config.py"
SOURCE = "convert.json"

_CONFIG_PY = '''"""The project config of a model converted by `python -m pretrain.convert from-hf`.

Converted from {source}. The values live in config.json beside this file:

  python -m pretrain.train --config=<this folder>/config.py --workdir=...
"""
import os

from pretrain import convert


def get_config():
  return convert.load_config(os.path.dirname(os.path.abspath(__file__)))
'''


def save_converted(directory: str, params, config: dict, source: dict) -> None:
  """Writes a converted folder's files into `directory` (an empty staging folder)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(os.path.abspath(directory), PARAMS), params)
  checkpointer.wait_until_finished()
  checkpointer.close()
  for name, value in ((CONFIG, config), (SOURCE, source)):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(value, f, indent=2, sort_keys=True)
      f.write("\n")
  with open(os.path.join(directory, CONFIG_PY), "w", encoding="utf-8") as f:
    f.write(_CONFIG_PY.format(source=f"{source.get('hf_dir')} ({source.get('architecture')})"))


def folder(path: str) -> str:
  """`path` as the readers take it: absolute when local (orbax wants that), the URL when remote."""
  return os.fspath(epath.Path(path)) if paths.is_remote(path) else os.path.abspath(path)


def _remote_error(path: str, e: Exception) -> PretrainError:
  return PretrainError(f"cannot read {path}: {type(e).__name__}: {e}")


def _isdir(path: str) -> bool:
  if not paths.is_remote(path):
    return os.path.isdir(path)
  try:
    return epath.Path(path).is_dir()  # On GCS: some object is under the prefix.
  except Exception as e:  # pylint: disable=broad-except  # Each epath backend has its own errors.
    raise _remote_error(path, e) from None


def _listdir(path: str) -> list[str]:
  if not paths.is_remote(path):
    return os.listdir(path)
  try:
    return [p.name for p in epath.Path(path).iterdir()]
  except Exception as e:  # pylint: disable=broad-except
    raise _remote_error(path, e) from None


def _is_step(step_dir: str) -> bool:
  """A complete step folder. Locally orbax renames it into place when done; on GCS it is written in place
  and complete once its commit_success.txt is (orbax's own test)."""
  if not _isdir(os.path.join(step_dir, "state")):
    return False
  if not paths.is_remote(step_dir):
    return True
  try:
    return ocp.step.is_path_finalized(step_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise _remote_error(step_dir, e) from None


def read_json(path: str, what: str) -> dict:
  """hf_io.read_json, of a local file or a URL."""
  if not paths.is_remote(path):
    from pretrain.convert import hf_io  # pylint: disable=import-outside-toplevel  # safetensors: not for init_from.

    return hf_io.read_json(path, what)
  try:
    text = epath.Path(path).read_text(encoding="utf-8")
  except FileNotFoundError:
    raise PretrainError(f"{what}: {path} does not exist") from None
  except Exception as e:  # pylint: disable=broad-except  # Each epath backend has its own errors.
    raise PretrainError(f"{what}: cannot read {path}: {type(e).__name__}: {e}") from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise PretrainError(f"{what}: cannot read {path}: {e}") from None
  if not isinstance(value, dict):
    raise PretrainError(f"{what}: {path} does not hold a JSON object")
  return value


def _step_dir(path: str, step: int | None) -> str:
  """The step folder of a training workdir (or of its checkpoints/ folder): `step`, or the newest."""
  directory = (
    os.path.join(path, "checkpoints") if _isdir(os.path.join(path, "checkpoints")) else path
  )
  steps = sorted(
    int(n) for n in _listdir(directory) if n.isdigit() and _is_step(os.path.join(directory, n))
  )
  if not steps:
    raise PretrainError(
      f"{path} holds no checkpoint: expected a converted folder ({PARAMS}/, {CONFIG}) "
      "or a training workdir (checkpoints/<step>/state)"
    )
  if step is None:
    return os.path.join(directory, str(steps[-1]))
  if step not in steps:
    raise PretrainError(
      f"{path} has no checkpoint of step {step}; it has steps {', '.join(map(str, steps))}"
    )
  return os.path.join(directory, str(step))


def locate(path: str, step: int | None = None) -> tuple[str, str | None, dict, dict]:
  """(orbax folder, key of the params in it or None, project config, source) of a params folder.

  `path` is a converted folder, a training workdir, its checkpoints/ folder or one step folder, local or
  a URL.
  """
  path = folder(path)
  if not _isdir(path):
    raise PretrainError(f"--ckpt {path} is not a directory")
  if _isdir(os.path.join(path, PARAMS)):
    if step is not None:
      raise PretrainError(f"{path} is a converted folder (one set of params): it takes no step")
    config = read_json(os.path.join(path, CONFIG), "converted model config")
    source = read_json(os.path.join(path, SOURCE), "converted model source")
    return os.path.join(path, PARAMS), None, config, source
  if _isdir(os.path.join(path, "state")):
    if not _is_step(path):
      raise PretrainError(f"{path} is a checkpoint whose save did not complete")
    step_dir = path
  else:
    step_dir = _step_dir(path, step)
  try:
    config = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, "config"))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for a bad folder.
    raise PretrainError(
      f"cannot read the config of checkpoint {step_dir}: {type(e).__name__}: {e}"
    ) from None
  return os.path.join(step_dir, "state"), "params", config, {}


def stored_tree(directory: str, key: str | None):
  """The stored params' metadata tree (leaves have .shape and .dtype); reads no arrays."""
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory)).tree
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainError(
      f"cannot read the checkpoint in {directory}: {type(e).__name__}: {e}"
    ) from None
  if key is not None:
    if key not in tree:
      raise PretrainError(f"the checkpoint in {directory} has no {key!r}")
    tree = tree[key]
  return tree


def _restore(directory: str, key: str | None, item, restore_args):
  if key is not None:
    item, restore_args = {key: item}, {key: restore_args}
  try:
    out = ocp.PyTreeCheckpointer().restore(
      directory,
      args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainError(f"cannot read the params in {directory}: {type(e).__name__}: {e}") from None
  return out[key] if key is not None else out


def read_numpy(directory: str, key: str | None) -> dict:
  """The params as numpy arrays on the host, in the layout stored."""
  tree = stored_tree(directory, key)
  item = jax.tree.map(lambda _: 0, tree)
  return _restore(
    directory, key, item, jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  )


def read_into(directory: str, key: str | None, target) -> Any:
  """The params read straight into `target`'s shardings (ShapeDtypeStructs with .sharding)."""
  return _restore(directory, key, target, ocp.checkpoint_utils.construct_restore_args(target))


# Layer layouts: one subtree per layer (`<prefix>_<i>`, e.g. `layer_i` in BERT) or, with scan_layers, one
# subtree stacked on axis 0 (e.g. `layers`). Each family names its own (Task.layer_stacks, {prefix: stacked});
# `stacks=None` takes those of every registered family.


def _stacks(stacks: dict[str, str] | None) -> dict[str, str]:
  return families.layer_stacks() if stacks is None else stacks


def is_scanned(params, stacks: dict[str, str] | None = None) -> bool:
  stacks = _stacks(stacks)
  if not isinstance(params, dict):
    return False
  return bool(set(stacks.values()) & set(params)) or any(
    is_scanned(v, stacks) for v in params.values()
  )


def unstack_layers(params, stacks: dict[str, str] | None = None):
  """Scanned layout -> one subtree per layer (numpy)."""
  stacks = _stacks(stacks)
  if not isinstance(params, dict):
    return params
  out = {}
  for k, v in params.items():
    prefix = next((p for p, s in stacks.items() if s == k), None)
    if prefix is None:
      out[k] = unstack_layers(v, stacks)
      continue
    for i in range(jax.tree.leaves(v)[0].shape[0]):
      out[f"{prefix}_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), v)
  return out


def stack_layers(params, stacks: dict[str, str] | None = None):
  """One subtree per layer -> the scanned layout (numpy)."""
  stacks = _stacks(stacks)
  if not isinstance(params, dict):
    return params
  layer = re.compile(rf"^({'|'.join(map(re.escape, stacks))})_(\d+)$")
  out = {k: stack_layers(v, stacks) for k, v in params.items() if not layer.match(k)}
  for prefix, stacked in stacks.items():
    n = sum(1 for k in params if layer.match(k) and layer.match(k).group(1) == prefix)
    if n:
      out[stacked] = jax.tree.map(
        lambda *xs: np.stack(xs), *(params[f"{prefix}_{i}"] for i in range(n))
      )
  return out


def flatten(tree) -> dict[str, Any]:
  """{'a/b/c': leaf} of a nested dict."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
  return out


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_shapes(actual: dict, expected: dict, what: str) -> None:
  """Same leaves and shapes in two trees (of arrays, ShapeDtypeStructs or metadata), else one error naming
  the first difference."""
  a, e = flatten(actual), flatten(expected)
  missing, extra = sorted(set(e) - set(a)), sorted(set(a) - set(e))
  if missing:
    raise PretrainError(
      f"{what}: param {missing[0]} is missing"
      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    )
  if extra:
    raise PretrainError(
      f"{what}: unexpected param {extra[0]}"
      + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    )
  for name in sorted(e):
    if _shape(a[name]) != _shape(e[name]):
      raise PretrainError(
        f"{what}: param {name} has shape {_shape(a[name])} but the model's is {_shape(e[name])}"
      )


def family_stacks(config: dict) -> dict[str, str] | None:
  """The layer layout (Task.layer_stacks) of the family that a saved config names, or None (every family's)."""
  name = (config.get("task") or {}).get("name")
  return families.layer_stacks(name) if name in families.FAMILIES else None


def load_params(path: str, target: Any = None, *, step: int | None = None):
  """Params saved in `path`: a converted folder, a training workdir or one of its step folders.

  Args:
    path: the folder, local or a URL (gs://...).
    target: None for numpy arrays in the layout stored; or the model's params
      as ShapeDtypeStructs with shardings (e.g. `StepFunctions.abstract_state.params`),
      to read them onto the devices in those shardings, in the target's layer
      layout (scanned or not), after checking every shape.
    step: the step of a training workdir (default: the newest).
  """
  directory, key, config, _ = locate(path, step)
  if target is None:
    return read_numpy(directory, key)
  stacks = family_stacks(config)
  stored = stored_tree(directory, key)
  if is_scanned(stored, stacks) == is_scanned(target, stacks):
    check_shapes(stored, target, path)
    return read_into(directory, key, target)
  params = read_numpy(directory, key)
  params = (
    stack_layers(params, stacks) if is_scanned(target, stacks) else unstack_layers(params, stacks)
  )
  check_shapes(params, target, path)
  return jax.tree.map(
    lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), params, target
  )
