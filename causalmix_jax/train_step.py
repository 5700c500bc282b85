"""TrainState, its (sharded) creation, and the pure train and eval steps shared by the
proxy sweep and the target.

`make_train_step` / `make_eval_step` return pure functions of pytrees: the sweep runs
them inside `lax.scan` under one `vmap`; the target jits them with explicit in/out
shardings and donation (`make_sharded_train_step`), so sharding lives outside the step.

A batch is `{"tokens": int32[B, L+1], "mask": uint8[B, L+1], "domain": int32[B]}`;
inputs are `tokens[:, :-1]`, labels `tokens[:, 1:]`, and the loss counts `mask[:, 1:]`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from causalmix_jax import losses
from causalmix_jax import model
from causalmix_jax import optim
from causalmix_jax import sharding

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; vmappable and shardable)."""
  step: jax.Array  # int32 scalar: optimiser updates done
  params: Any
  opt_state: Any


def init_train_state(model_cfg: ml_collections.ConfigDict,
                     optim_cfg: ml_collections.ConfigDict, key: jax.Array, *,
                     boxed: bool = False) -> TrainState:
  """Fresh state from `key`; pure and vmappable. `boxed=True` keeps logical-axis boxes
  on parameters and on the optimiser moments (for deriving shardings)."""
  params = model.init_params(model_cfg, key, boxed=boxed)
  opt_state = optim.make_optimizer(optim_cfg).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def _loss_and_grads(spec: model.ModelSpec, params: Any, tokens_BxL1: jax.Array,
                    mask_BxL1: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
  """(loss_sum, sum_B, count_B, grads of loss_sum) for one (micro-)batch."""
  inputs_BxL, labels_BxL, weight_BxL = losses.split_batch(tokens_BxL1, mask_BxL1)

  def loss_fn(p):
    logits_BxLxV = model.apply(spec, p, inputs_BxL)
    sum_B, count_B = losses.masked_xent_sums(logits_BxLxV, labels_BxL, weight_BxL)
    return sum_B.sum(), (sum_B, count_B)

  (loss_sum, (sum_B, count_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss_sum, sum_B, count_B, grads


def make_train_step(model_cfg: ml_collections.ConfigDict,
                    optim_cfg: ml_collections.ConfigDict,
                    n_domains: int) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  The loss is the token-weighted mean over the whole batch (all micro-batches when
  `optim_cfg.grad_accum` > 1). Metrics: loss, loss_sum_D, count_D (per-domain sums and
  token counts of this step's batch, before the update), grad_norm (after averaging,
  before clipping), update_norm (of the applied update; non-finite means the new
  parameters are not usable), lr (of this update), tokens (loss tokens).
  """
  spec = model.ModelSpec.from_config(model_cfg)
  tx = optim.make_optimizer(optim_cfg)
  schedule = optim.learning_rate_schedule(optim_cfg)
  accum = int(optim_cfg.grad_accum)
  if accum < 1:
    raise ValueError(f"optim.grad_accum={accum} must be >= 1")

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    tokens, mask = batch["tokens"], batch["mask"]
    if accum == 1:
      _, sum_B, count_B, grads = _loss_and_grads(spec, state.params, tokens, mask)
    else:
      b = tokens.shape[0]
      if b % accum:
        raise ValueError(f"batch size {b} is not divisible by optim.grad_accum={accum}")
      micro = lambda x: x.reshape((accum, b // accum) + x.shape[1:])

      def body(g_acc, tm):
        _, s_b, c_b, g = _loss_and_grads(spec, state.params, *tm)
        return jax.tree.map(jnp.add, g_acc, g), (s_b, c_b)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grads, (sum_AxB, count_AxB) = jax.lax.scan(body, zeros, (micro(tokens), micro(mask)))
      sum_B, count_B = sum_AxB.reshape(b), count_AxB.reshape(b)
    count = count_B.sum()
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": losses.mean_loss(sum_B.sum(), count),
        "loss_sum_D": losses.per_domain(sum_B, batch["domain"], n_domains),
        "count_D": losses.per_domain(count_B, batch["domain"], n_domains),
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "lr": schedule(state.step),
        "tokens": count,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model_cfg: ml_collections.ConfigDict,
                   n_domains: int) -> Callable[[Any, Batch], Metrics]:
  """Returns the pure `eval_step(params, batch) -> {"loss_sum_D", "count_D"}`."""
  spec = model.ModelSpec.from_config(model_cfg)

  def eval_step(params: Any, batch: Batch) -> Metrics:
    inputs_BxL, labels_BxL, weight_BxL = losses.split_batch(batch["tokens"], batch["mask"])
    logits_BxLxV = model.apply(spec, params, inputs_BxL)
    sum_B, count_B = losses.masked_xent_sums(logits_BxLxV, labels_BxL, weight_BxL)
    return {"loss_sum_D": losses.per_domain(sum_B, batch["domain"], n_domains),
            "count_D": losses.per_domain(count_B, batch["domain"], n_domains)}

  return eval_step


# ----------------------------------------------------------------------------- sharded


def state_shardings(model_cfg: ml_collections.ConfigDict,
                    optim_cfg: ml_collections.ConfigDict, mesh: Mesh,
                    rules: sharding.Rules) -> TrainState:
  """NamedShardings of every TrainState leaf, from the parameters' logical axis names
  (optimiser moments follow their parameters; scalars are replicated)."""
  abstract = jax.eval_shape(
      lambda k: init_train_state(model_cfg, optim_cfg, k, boxed=True), jax.random.key(0))
  logical = nn.get_partition_spec(abstract)
  shapes = jax.eval_shape(lambda k: init_train_state(model_cfg, optim_cfg, k),
                          jax.random.key(0))
  return sharding.logical_to_shardings(logical, shapes, mesh, rules)


def create_sharded_state(model_cfg: ml_collections.ConfigDict,
                         optim_cfg: ml_collections.ConfigDict, mesh: Mesh,
                         rules: sharding.Rules, key: jax.Array
                         ) -> tuple[TrainState, TrainState]:
  """(state, its shardings): the state is created already sharded by a jitted init."""
  shardings = state_shardings(model_cfg, optim_cfg, mesh, rules)
  init = jax.jit(lambda k: init_train_state(model_cfg, optim_cfg, k),
                 out_shardings=shardings)
  return init(key), shardings


def make_sharded_train_step(model_cfg: ml_collections.ConfigDict,
                            optim_cfg: ml_collections.ConfigDict, n_domains: int,
                            mesh: Mesh, rules: sharding.Rules,
                            shardings: TrainState) -> Callable:
  """`train_step` jitted with explicit in/out shardings; the input state is donated.
  Metrics come back replicated."""
  step = make_train_step(model_cfg, optim_cfg, n_domains)
  batch_sh = sharding.batch_shardings(mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))


def make_sharded_eval_step(model_cfg: ml_collections.ConfigDict, n_domains: int,
                           mesh: Mesh, rules: sharding.Rules,
                           shardings: TrainState) -> Callable:
  """`eval_step` jitted with the parameters' shardings and a data-parallel batch."""
  step = make_eval_step(model_cfg, n_domains)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(shardings.params, sharding.batch_shardings(mesh, rules)),
                 out_shardings=replicated)
