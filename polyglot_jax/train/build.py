"""Build a run: mesh, objective, abstract state, shardings and the jit'd init / train / eval steps.

Nothing here knows a method: batch fields come from the objective's batch
spec, extra state from its ``init_extra``, metric reductions from its
``metrics``. ``train_and_evaluate`` (train/trainer.py) runs the loop over
what ``build`` returns; tests, benchmarks and the planner call ``build``
directly.

Step outputs (the dict ``train_step`` returns beside the new state):
``outputs`` (the objective's reduced ``loss_sums`` outputs), ``loss`` (the
differentiated loss, normalised), ``grad_norm`` (before clipping),
``skipped_steps``, ``consecutive_skips``, ``real_tokens`` and
``token_slots`` (non-padding tokens and all token positions of the batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.data import records
from polyglot_jax.errors import ConfigError
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import AUX_OUTPUTS, Decoder
from polyglot_jax.objectives import make_objective
from polyglot_jax.objectives.base import Objective, StepContext
from polyglot_jax.train.metrics import MetricWindow
from polyglot_jax.train.optimizer import make_optimizer
from polyglot_jax.train.state import TrainState, join_params, keep_if, split_params


@dataclasses.dataclass
class Setup:
  """Everything built before the loop; tests and benchmarks reuse it."""
  config: ConfigDict
  mesh: Any
  model_cfg: ModelConfig
  graphdef: Any
  objective: Objective
  optimizer: optax.GradientTransformation
  total_steps: int
  abstract_state: TrainState
  state_shardings: TrainState
  batch_sharding: NamedSharding  # The [batch, length] sharding (2-d fields).
  batch_shardings: dict[str, NamedSharding]  # Per field of the objective's batch spec.
  init_fn: Callable  # () → TrainState, created sharded.
  init_extra: Callable  # params → the objective's extra state, sharded (after init_from).
  train_step: Callable  # (state, batch) → (state, step outputs)
  eval_step: Callable  # (params, extra, batch) → the objective's outputs for one batch


def build(config: ConfigDict, num_languages: int, mesh=None) -> Setup:
  """Mesh, abstract state, shardings and the jit'd init / train / eval functions."""
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh.to_dict())
  rules = mesh_lib.rules_tuple(config.logical_axis_rules)
  model_cfg = ModelConfig.from_config(config.model)
  objective = make_objective(config, num_languages)
  missing_aux = set(objective.aux_outputs) - set(AUX_OUTPUTS)
  if missing_aux:
    raise ConfigError(f"objective '{objective.name}' reads decoder outputs {sorted(missing_aux)}, which the "
                      f"decoder does not give (it gives {list(AUX_OUTPUTS)})")
  spec = objective.batch_spec()
  for prefix, kind in objective.data_streams().items():
    records.check_batch_spec(objective.name, {k[len(prefix):]: f for k, f in spec.items() if k.startswith(prefix)},
                             kind, config.data.seq_len)
  total_steps = config_lib.resolve_steps(config)
  optimizer = make_optimizer(config.optimizer, total_steps)
  seed = config.seed

  def init_fn() -> TrainState:
    model = Decoder(model_cfg, nnx.Rngs(params=seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    trainable, _ = split_params(params, objective.trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(trainable),
                      rng=jax.random.PRNGKey(seed + 1), skipped_steps=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32), extra=objective.init_extra(params))

  with mesh_lib.activate(mesh, rules):
    abstract_model = nnx.eval_shape(lambda: Decoder(model_cfg, nnx.Rngs(params=seed)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
    abstract_state = jax.eval_shape(init_fn)

  replicated = mesh_lib.replicated(mesh)
  param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs,
                                 is_leaf=lambda x: isinstance(x, PartitionSpec))
  train_shardings, _ = split_params(param_shardings, objective.trainable)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_state.opt_state, train_shardings,
      transform_non_params=lambda _: replicated)
  extra_shardings = objective.extra_shardings(param_shardings)
  state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                               rng=replicated, skipped_steps=replicated, consecutive_skips=replicated,
                               extra=extra_shardings)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_shardings)
  batch_shardings = {k: mesh_lib.batch_sharding(mesh, 1 + len(f.shape)) for k, f in spec.items()}
  accum = config.optimizer.grad_accum_steps
  reductions = objective.output_reductions()

  def loss_fn(trainable, frozen, micro, ctx):
    model = nnx.merge(graphdef, join_params(trainable, frozen))
    loss_sum, weight, sums = objective.loss_sums(model, micro, ctx)
    return loss_sum, (weight, sums)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def combine(a: dict, b: dict) -> dict:
    return {k: jnp.maximum(a[k], b[k]) if reductions.get(k) == "max" else a[k] + b[k] for k in a}

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    trainable, frozen = split_params(state.params, objective.trainable)
    next_rng, step_rng = jax.random.split(state.rng)
    norms = objective.normalizers(batch) if objective.prenormalized else None

    def context(rng):
      return StepContext(rng=rng, step=state.step, extra=state.extra, normalizers=norms)

    if accum == 1:
      (loss_sum, (weight, sums)), grads = grad_fn(trainable, frozen, batch, context(step_rng))
    else:
      # Micro-batch m takes rows m, m+A, m+2A...: the batch dim keeps its
      # (data, fsdp) sharding and every device works on every micro-batch.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1), batch)
      micro_rngs = jax.random.split(step_rng, accum)

      def body(carry, xs):
        (l, w, s), g = carry
        micro_batch, rng = xs
        (l_i, (w_i, s_i)), g_i = grad_fn(trainable, frozen, micro_batch, context(rng))
        return ((l + l_i, w + w_i, combine(s, s_i)), jax.tree.map(jnp.add, g, g_i)), None

      shapes = jax.eval_shape(lambda m, r: grad_fn(trainable, frozen, m, context(r)),
                              jax.tree.map(lambda x: x[0], micro), micro_rngs[0])
      (_, (_, sum_shapes)), _ = shapes
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), ((shapes[0][0], shapes[0][1][0]), shapes[1]))
      sums0 = {k: jnp.full(v.shape, -jnp.inf, v.dtype) if reductions.get(k) == "max" else jnp.zeros(v.shape, v.dtype)
               for k, v in sum_shapes.items()}
      init = ((zeros[0][0], zeros[0][1], sums0), zeros[1])
      ((loss_sum, weight, sums), grads), _ = jax.lax.scan(body, init, (micro, micro_rngs))
      sums = {k: v / accum if reductions.get(k) == "mean" else v for k, v in sums.items()}
    denom = jnp.ones((), jnp.float32) if objective.prenormalized else jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = objective.keep_frozen(optax.apply_updates(trainable, updates), trainable)
    ok = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    new_trainable = keep_if(ok, new_trainable, trainable)
    new_opt_state = keep_if(ok, new_opt_state, state.opt_state)
    skipped = (~ok).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1, params=join_params(new_trainable, frozen), opt_state=new_opt_state,
        rng=next_rng, skipped_steps=state.skipped_steps + skipped,
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1), extra=state.extra)
    real, slots = objective.real_tokens(batch)
    out = {"outputs": sums, "loss": loss_sum / denom, "grad_norm": grad_norm,
           "skipped_steps": new_state.skipped_steps, "consecutive_skips": new_state.consecutive_skips,
           "real_tokens": real, "token_slots": slots}
    return new_state, out

  def eval_step(params, extra, batch):
    trainable, frozen = split_params(params, objective.trainable)
    ctx = StepContext(rng=jax.random.PRNGKey(0), step=jnp.zeros((), jnp.int32), extra=extra,
                      normalizers=objective.normalizers(batch) if objective.prenormalized else None)
    _, (_, sums) = loss_fn(trainable, frozen, batch, ctx)
    return sums

  def init_extra_fn(params):
    return objective.init_extra(params)

  jit_init = jax.jit(init_fn, out_shardings=state_shardings)
  jit_extra = jax.jit(init_extra_fn, in_shardings=(param_shardings,), out_shardings=extra_shardings)
  jit_train = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  jit_eval = jax.jit(eval_step, in_shardings=(param_shardings, extra_shardings, batch_shardings),
                     out_shardings=replicated)

  def run_with_rules(fn):
    def wrapped(*args):
      with mesh_lib.activate(mesh, rules):
        return fn(*args)
    wrapped.lower = lambda *a: _lower(fn, mesh, rules, *a)
    return wrapped

  return Setup(config=config, mesh=mesh, model_cfg=model_cfg, graphdef=graphdef, objective=objective,
               optimizer=optimizer, total_steps=total_steps, abstract_state=abstract_state,
               state_shardings=state_shardings, batch_sharding=mesh_lib.batch_sharding(mesh),
               batch_shardings=batch_shardings, init_fn=run_with_rules(jit_init),
               init_extra=run_with_rules(jit_extra), train_step=run_with_rules(jit_train),
               eval_step=run_with_rules(jit_eval))


def _lower(fn, mesh, rules, *args):
  with mesh_lib.activate(mesh, rules):
    return fn.lower(*args)


def global_batch(setup: Setup, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over (data, fsdp).

  Raises:
    ConfigError: the local batch lacks a field of the objective's batch spec.
  """
  out = {}
  spec = setup.objective.batch_spec()
  for k, field in spec.items():
    if k not in local:
      raise ConfigError(f"objective '{setup.objective.name}' needs batch field '{k}', which the data does not "
                        f"give (it gives {sorted(local)}); set config.data.kind to a record kind that has it")
    x = np.asarray(local[k], dtype=field.dtype)
    shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    out[k] = jax.make_array_from_process_local_data(setup.batch_shardings[k], x, shape)
  return out


def abstract_batch(setup: Setup) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch as ShapeDtypeStructs (for ahead-of-time lowering)."""
  n = setup.config.data.global_batch_size
  return {k: jax.ShapeDtypeStruct((n,) + f.shape, jnp.dtype(f.dtype), sharding=setup.batch_shardings[k])
          for k, f in setup.objective.batch_spec().items()}


def evaluate(setup: Setup, params, extra, batches, languages) -> dict[str, float]:
  """The objective's metrics over held-out batches (reduced as it declares)."""
  window = MetricWindow(setup.objective.metrics, languages)
  for local in batches:
    window.add(jax.device_get(setup.eval_step(params, extra, global_batch(setup, local))))
  return window.summary()
