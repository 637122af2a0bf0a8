"""The train state and the jitted, sharded train and eval steps.

`build` derives every sharding from the logical axis names on the model's
params (through the one rules table in pretrain/sharding.py), so the loop and
the benchmark compile exactly the same step. `build_for_run` is that step as a run's config
defines it: the train loop runs it and pretrain.plan compiles it for a target.
"""

import dataclasses
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pretrain import sharding
from pretrain.training.optimizer import make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _make_train_step(task, model, tx, schedule, grad_accum: int, seed: int):
  base_key = jax.random.key(seed)

  def grads_and_sums(params, batch, denominators, rng):
    def objective(p):
      return task.loss(model, p, batch, denominators, dropout_rng=rng, deterministic=False)

    (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, sums

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)
    denominators = task.denominators(batch)
    if grad_accum == 1:
      grads, sums = grads_and_sums(state.params, batch, denominators, rng)
    else:
      # Microbatch i takes rows i, i + A, i + 2A, ... so every microbatch stays spread over all shards.
      micro = jax.tree.map(lambda x: x.reshape(-1, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, xs):
        i, mb = xs
        g, s = grads_and_sums(state.params, mb, denominators, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zero = jax.eval_shape(
        lambda: grads_and_sums(state.params, jax.tree.map(lambda x: x[0], micro), denominators, rng)
      )
      zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
      (grads, sums), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(task.finalize(sums))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    # A step whose loss or gradients are not finite is skipped here, on the device, without a host sync:
    # params and the optimizer's float state (moments) keep their old values. The step counter and the
    # optimizer's integer counts still advance, so the data position, the learning-rate schedule and
    # the step numbers of metrics and checkpoints stay in lockstep; the loop decides whether to stop.
    ok = jnp.isfinite(metrics["loss"]) & jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(
      lambda new, old: keep(new, old) if jnp.issubdtype(new.dtype, jnp.inexact) else new,
      opt_state,
      state.opt_state,
    )
    metrics["skipped"] = jnp.logical_not(ok).astype(jnp.int32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def _make_eval_step(task, model):
  def eval_step(params, batch):
    _, sums = task.loss(model, params, batch, task.denominators(batch), deterministic=True)
    return sums

  return eval_step


@dataclasses.dataclass
class StepFunctions:
  """What the loop needs to init, restore, train and evaluate on one mesh."""

  mesh: jax.sharding.Mesh
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings (restore target).
  abstract_batch: dict
  num_params: int
  _init: Callable
  _train_step: Callable
  _eval_step: Callable

  def init_state(self, seed: int) -> TrainState:
    with sharding.mesh_context(self.mesh):
      return self._init(jax.random.key(seed))

  def lower_train_step(self):
    """The train step lowered for this mesh's devices (pretrain.plan compiles it for devices it lacks)."""
    with sharding.mesh_context(self.mesh):
      return self._train_step.lower(self.abstract_state, self.abstract_batch)

  def compile_train_step(self):
    """(compiled step, seconds it took); the step donates the state it is given."""
    t0 = time.perf_counter()
    compiled = self.lower_train_step().compile()
    return compiled, time.perf_counter() - t0

  def eval_step(self, params, batch):
    with sharding.mesh_context(self.mesh):
      return self._eval_step(params, batch)


def build_for_run(config, task, mesh) -> StepFunctions:
  """The run's step as its config defines it: the task's model, config.optimizer over train.steps,
  train.batch_size in train.grad_accum_steps microbatches, train.seed. pretrain.train runs it and
  pretrain.plan compiles it for a target, so the two are one step."""
  tx, schedule = make_optimizer(config.optimizer, int(config.train.steps))
  return build(
    task,
    task.build_model(),
    tx,
    schedule,
    mesh,
    int(config.train.batch_size),
    grad_accum=int(config.train.grad_accum_steps),
    seed=int(config.train.seed),
  )


def build(
  task, model, tx, schedule, mesh, global_batch: int, *, grad_accum: int = 1, seed: int = 0
) -> StepFunctions:
  dummy = task.dummy_batch(1)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *task.init_args(dummy)))["params"]
  param_sh = sharding.param_shardings(boxed, mesh)
  abstract_params = nn.unbox(boxed)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Optimizer leaves shaped like their param share its sharding; others (Adafactor's factored row/column
  # moments, counts) are small and replicated.
  opt_sh = optax.tree_map_params(
    tx,
    lambda leaf, s, p: s if leaf.shape == p.shape else replicated,
    abstract_opt,
    param_sh,
    abstract_params,
    transform_non_params=lambda _: replicated,
  )
  state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
  abstract_state = sharding.abstract(
    TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt
    ),
    state_sh,
  )
  batch_sh = sharding.data_sharding(mesh)
  abstract_batch = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct((global_batch,) + x.shape[1:], x.dtype, sharding=batch_sh), dummy
  )

  def init_state(rng):
    params = nn.unbox(model.init(rng, *task.init_args(dummy))["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return StepFunctions(
    mesh=mesh,
    abstract_state=abstract_state,
    abstract_batch=abstract_batch,
    num_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params)),
    _init=jax.jit(init_state, out_shardings=state_sh),
    _train_step=jax.jit(
      _make_train_step(task, model, tx, schedule, grad_accum, seed),
      in_shardings=(state_sh, batch_sh),
      out_shardings=(state_sh, replicated),
      donate_argnums=(0,),
    ),
    _eval_step=jax.jit(
      _make_eval_step(task, model), in_shardings=(param_sh, batch_sh), out_shardings=replicated
    ),
  )
