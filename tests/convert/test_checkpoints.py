"""convert.checkpoints: layer layouts, the converted folder on disk, load_params into a target, shape checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.convert import checkpoints
from pretrain.errors import PretrainError


def _layer(seed: int) -> dict:
  return {
    "attention": {"kernel": np.full((8, 4), seed, np.float32)},
    "bias": np.arange(3, dtype=np.float32) + seed,
  }


def _bert_like(n: int = 3) -> dict:
  """A BERT-shaped tree: per-layer subtrees `layer_i` next to other params."""
  return {
    "bert": {
      "encoder": {f"layer_{i}": _layer(i) for i in range(n)},
      "embeddings": {"embedding": np.ones((5, 4), np.float32)},
    }
  }


def test_stack_and_unstack_layers_of_each_family():
  params = _bert_like()
  assert not checkpoints.is_scanned(params)
  stacked = checkpoints.stack_layers(params)
  layers = stacked["bert"]["encoder"]["layers"]
  assert set(stacked["bert"]["encoder"]) == {"layers"} and checkpoints.is_scanned(stacked)
  np.testing.assert_array_equal(layers["attention"]["kernel"][:, 0, 0], [0, 1, 2])
  np.testing.assert_array_equal(layers["bias"], np.arange(3)[None] + np.arange(3)[:, None])
  np.testing.assert_array_equal(
    stacked["bert"]["embeddings"]["embedding"], params["bert"]["embeddings"]["embedding"]
  )
  back = checkpoints.unstack_layers(stacked)
  assert checkpoints.flatten(back).keys() == checkpoints.flatten(params).keys()
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # T5: `block_i` in the encoder and in the decoder, each stacked on its own.
  t5 = {
    "encoder": {f"block_{i}": _layer(i) for i in range(2)},
    "decoder": {f"block_{i}": _layer(9) for i in range(4)},
  }
  stacked = checkpoints.stack_layers(t5, {"block": "block"})
  assert stacked["encoder"]["block"]["bias"].shape == (2, 3) and stacked["decoder"]["block"][
    "bias"
  ].shape == (4, 3)
  jax.tree.map(
    np.testing.assert_array_equal, checkpoints.unstack_layers(stacked, {"block": "block"}), t5
  )
  # A family's own layout leaves another family's names alone.
  assert set(checkpoints.stack_layers(params, {"h": "h"})["bert"]["encoder"]) == {
    "layer_0",
    "layer_1",
    "layer_2",
  }
  assert not checkpoints.is_scanned({"layers": {}}, {"h": "h"}) and checkpoints.is_scanned(
    {"h": {}}, {"h": "h"}
  )


def test_family_stacks_follow_the_saved_task():
  assert checkpoints.family_stacks({"task": {"name": "gpt2"}}) == {"h": "h"}
  assert checkpoints.family_stacks({"task": {"name": "roberta"}}) == {"layer": "layers"}
  assert checkpoints.family_stacks({}) is None


def test_check_shapes_names_the_first_difference():
  a = {"x": np.zeros((2, 3)), "y": {"z": np.zeros(4)}}
  checkpoints.check_shapes(
    a, jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), a), "here"
  )
  with pytest.raises(
    PretrainError, match=r"here: param y/z has shape \(4,\) but the model's is \(5,\)"
  ):
    checkpoints.check_shapes(a, {"x": np.zeros((2, 3)), "y": {"z": np.zeros(5)}}, "here")
  with pytest.raises(PretrainError, match=r"here: param v is missing \(and 1 more\)"):
    checkpoints.check_shapes(a, dict(a, w=np.zeros(1), v=np.zeros(1)), "here")
  with pytest.raises(PretrainError, match="here: unexpected param x"):
    checkpoints.check_shapes(a, {"y": a["y"]}, "here")


@pytest.fixture
def converted(tmp_path):
  params = _bert_like()
  out = tmp_path / "converted"
  out.mkdir()
  checkpoints.save_converted(
    str(out), params, {"task": {"name": "bert"}, "model": {}}, {"hf_dir": "x"}
  )
  return str(out), params


def test_a_converted_folder_reads_back_in_either_layout(converted):
  out, params = converted
  assert sorted(os.listdir(out)) == ["config.json", "config.py", "convert.json", "params"]
  directory, key, config, source = checkpoints.locate(out)
  assert (directory, key, config["task"]["name"], source) == (
    os.path.join(out, "params"),
    None,
    "bert",
    {"hf_dir": "x"},
  )
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(out), params)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  like = lambda tree: jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=replicated), tree
  )
  # The stored layout straight into the target's shardings.
  flat = like(params)
  flat["bert"]["encoder"]["layer_1"]["attention"]["kernel"] = jax.ShapeDtypeStruct(
    (8, 4), jnp.float32, sharding=sharded
  )
  got = checkpoints.load_params(out, flat)
  assert got["bert"]["encoder"]["layer_1"]["attention"]["kernel"].sharding == sharded
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), params)
  # A scanned target: the layers are stacked on the way.
  got = checkpoints.load_params(out, like(checkpoints.stack_layers(params)))
  assert got["bert"]["encoder"]["layers"]["bias"].sharding == replicated
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), checkpoints.stack_layers(params))
  wrong = like(params)
  wrong["bert"]["embeddings"]["embedding"] = jax.ShapeDtypeStruct(
    (6, 4), jnp.float32, sharding=replicated
  )
  with pytest.raises(
    PretrainError, match=r"embeddings/embedding has shape \(5, 4\) but the model's is \(6, 4\)"
  ):
    checkpoints.load_params(out, wrong)


def test_bad_folders_are_refused(converted, tmp_path):
  out, _ = converted
  with pytest.raises(PretrainError, match="is a converted folder .*takes no step"):
    checkpoints.locate(out, step=3)
  with pytest.raises(PretrainError, match="is not a directory"):
    checkpoints.locate(str(tmp_path / "absent"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(PretrainError, match="holds no checkpoint"):
    checkpoints.load_params(str(tmp_path / "empty"))
  (tmp_path / "bad.json").write_text("[1]")
  with pytest.raises(PretrainError, match="does not hold a JSON object"):
    checkpoints.read_json(str(tmp_path / "bad.json"), "a thing")
