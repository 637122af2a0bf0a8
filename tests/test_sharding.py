"""Sharded BERT loss and grads equal single-device ones; params land where the rules say."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from pretrain import sharding
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert

TINY = bert.BertConfig(
  vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
)
BATCH, LENGTH, PREDICTIONS = 8, 16, 4


def make_batch(vocab=256, seed=0):
  rng = np.random.default_rng(seed)
  lengths = LENGTH - np.arange(BATCH)
  input_mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": (rng.integers(1, vocab, (BATCH, LENGTH)) * input_mask).astype(np.int32),
    "segment_ids": ((np.arange(LENGTH)[None] >= lengths[:, None] // 2) * input_mask).astype(
      np.int32
    ),
    "input_mask": input_mask,
    "masked_positions": np.stack(
      [rng.choice(n, PREDICTIONS, replace=False) for n in lengths]
    ).astype(np.int32),
    "masked_ids": rng.integers(0, vocab, (BATCH, PREDICTIONS)).astype(np.int32),
    "masked_weights": (rng.random((BATCH, PREDICTIONS)) < 0.8).astype(np.float32),
    "next_sentence_labels": rng.integers(0, 2, (BATCH,)).astype(np.int32),
  }


def loss_fn(config, params, batch):
  """Masked-LM cross entropy weighted by masked_weights, plus NSP cross entropy."""
  mlm, nsp = bert.BertForPreTraining(config).apply(
    {"params": params},
    batch["input_ids"],
    batch["segment_ids"],
    batch["input_mask"],
    batch["masked_positions"],
  )
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm, batch["masked_ids"])
  mlm_loss = jnp.sum(mlm_xent * batch["masked_weights"]) / jnp.sum(batch["masked_weights"])
  nsp_loss = optax.softmax_cross_entropy_with_integer_labels(
    nsp, batch["next_sentence_labels"]
  ).mean()
  return mlm_loss + nsp_loss


def boxed_params(config, seed=0):
  model = bert.BertForPreTraining(config)
  return model.init(jax.random.key(seed), **bert.init_inputs(1, LENGTH, PREDICTIONS))["params"]


def sharded_loss_and_grads(config, params, batch, mesh):
  shardings = sharding.param_shardings(jax.eval_shape(lambda: boxed_params(config)), mesh)
  with sharding.mesh_context(mesh):
    params = jax.device_put(params, shardings)
    batch = sharding.make_global_batch(batch, mesh)
    step = jax.jit(
      jax.value_and_grad(lambda p, b: loss_fn(config, p, b)),
      in_shardings=(shardings, sharding.data_sharding(mesh)),
      out_shardings=(NamedSharding(mesh, PartitionSpec()), shardings),
    )
    loss, grads = step(params, batch)
  return loss, grads, params


@pytest.fixture(scope="module")
def reference():
  params = nn.unbox(boxed_params(TINY))
  batch = make_batch()
  loss, grads = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(TINY, p, b)))(params, batch)
  return params, batch, loss, grads


@pytest.mark.parametrize(
  "mesh_cfg",
  [
    {"data": 8},
    {"fsdp": 8},
    {"data": 2, "fsdp": 2, "tensor": 2},
  ],
)
def test_sharded_loss_and_grads_match_single_device(reference, mesh_cfg):
  params, batch, expected_loss, expected_grads = reference
  mesh = sharding.make_mesh(mesh_cfg)
  loss, grads, _ = sharded_loss_and_grads(TINY, params, batch, mesh)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
  for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_scanned_layers_shard_and_match(reference):
  params, batch, expected_loss, expected_grads = reference
  config = dataclasses.replace(TINY, scan_layers=True, remat_policy="full")
  encoder = dict(params["bert"]["encoder"])
  layers = [encoder.pop(f"layer_{i}") for i in range(TINY.num_layers)]
  stacked = {
    **params,
    "bert": {
      **params["bert"],
      "encoder": {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)},
    },
  }
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  loss, grads, placed = sharded_loss_and_grads(config, stacked, batch, mesh)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
  kernel = placed["bert"]["encoder"]["layers"]["intermediate"]["kernel"]  # [layers, embed, mlp]
  assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
  np.testing.assert_allclose(
    grads["bert"]["encoder"]["layers"]["output"]["kernel"][1],
    expected_grads["bert"]["encoder"]["layer_1"]["output"]["kernel"],
    rtol=1e-5,
    atol=1e-6,
  )


def test_params_are_sharded_as_the_rules_say(reference):
  params, batch, _, _ = reference
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, grads, placed = sharded_loss_and_grads(TINY, params, batch, mesh)

  table = placed["bert"]["embeddings"]["word_embeddings"]["embedding"]  # [vocab, embed]
  assert table.sharding.spec == PartitionSpec("tensor", "fsdp")
  assert table.addressable_shards[0].data.shape == (128, 32)
  ffn_in = placed["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]  # [embed, mlp]
  assert ffn_in.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert ffn_in.addressable_shards[0].data.shape == (32, 64)
  ffn_out = placed["bert"]["encoder"]["layer_0"]["output"]["kernel"]  # [mlp, embed]
  assert ffn_out.sharding.spec == PartitionSpec("tensor", "fsdp")
  query = placed["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]  # [embed, heads]
  assert query.sharding.spec == PartitionSpec("fsdp", "tensor")
  norm = placed["bert"]["embeddings"]["layer_norm"]["scale"]
  assert norm.sharding.is_fully_replicated
  positions = placed["bert"]["embeddings"]["position_embeddings"]["embedding"]  # [position, embed]
  assert positions.sharding.spec == PartitionSpec(None, "fsdp")
  # Gradients come back sharded like their params.
  assert (
    grads["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == table.sharding.spec
  )


def test_activation_constraints_apply_only_inside_mesh_context(reference):
  params, batch, _, _ = reference
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  fn = jax.jit(lambda p, b: loss_fn(TINY, p, b))
  with sharding.mesh_context(mesh):
    inside = fn.lower(params, batch).as_text()
  outside = fn.lower(params, batch).as_text()
  assert inside.count("sharding_constraint") >= TINY.num_layers * 4
  assert "sharding_constraint" not in outside


def test_batch_is_split_over_data_and_fsdp():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = sharding.make_global_batch(make_batch(), mesh)
  ids = batch["input_ids"]
  assert ids.shape == (BATCH, LENGTH)
  assert ids.sharding.spec == PartitionSpec(("data", "fsdp"))
  assert {s.data.shape for s in ids.addressable_shards} == {(2, LENGTH)}
  np.testing.assert_array_equal(np.asarray(ids), make_batch()["input_ids"])


def test_make_mesh_fills_minus_one():
  mesh = sharding.make_mesh({"data": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:2])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
  "mesh_cfg, numbers",
  [
    ({"data": 3}, ["3", "8"]),
    ({"data": 2, "fsdp": 2}, ["4", "8"]),
    ({"data": -1, "tensor": 3}, ["tensor=3", "8"]),
  ],
)
def test_make_mesh_rejects_meshes_that_do_not_fit(mesh_cfg, numbers):
  with pytest.raises(PretrainError) as e:
    sharding.make_mesh(mesh_cfg)
  for n in numbers:
    assert n in str(e.value)


def test_make_mesh_rejects_two_fill_axes():
  with pytest.raises(PretrainError, match="-1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def test_non_divisible_dims_are_replicated():
  config = dataclasses.replace(TINY, vocab_size=250)  # 250 is not divisible by tensor=4
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  boxed = jax.eval_shape(lambda: boxed_params(config))
  shardings = sharding.param_shardings(boxed, mesh)
  assert shardings["bert"]["embeddings"]["word_embeddings"]["embedding"].spec == PartitionSpec(
    None, "fsdp"
  )
  assert shardings["mlm_head"]["output_bias"].spec == PartitionSpec(None)
  assert shardings["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"].spec == PartitionSpec(
    "fsdp", "tensor"
  )

  params = nn.unbox(boxed_params(config))
  batch = make_batch(vocab=250)
  expected = jax.jit(lambda p, b: loss_fn(config, p, b))(params, batch)
  loss, _, _ = sharded_loss_and_grads(config, params, batch, mesh)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
