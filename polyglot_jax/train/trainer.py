"""The trainer: one jit'd step for every objective, on one mesh.

Read top to bottom: setup → mesh → data → model and objective → abstract
init and shardings → restore or init → compile → loop (log, eval,
checkpoint, preemption) → final evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.data.packing import FIELDS
from polyglot_jax.data.backends import make_data
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder
from polyglot_jax.models.flops import train_flops_per_token
from polyglot_jax.objectives import make_objective
from polyglot_jax.train import metrics as metrics_lib
from polyglot_jax.train.checkpoint import CheckpointError, Checkpointer, shape_signature
from polyglot_jax.train.profiling import StepProfiler
from polyglot_jax.train.optimizer import learning_rate_schedule, make_optimizer
from polyglot_jax.train.state import TrainState, join_params, keep_if, split_params
from polyglot_jax.errors import TrainingError  # noqa: F401  (re-exported)




@dataclasses.dataclass
class Setup:
  """Everything built before the loop; tests and benchmarks reuse it."""
  config: ConfigDict
  mesh: Any
  model_cfg: ModelConfig
  graphdef: Any
  objective: Any
  optimizer: optax.GradientTransformation
  total_steps: int
  abstract_state: TrainState
  state_shardings: TrainState
  batch_sharding: NamedSharding
  init_fn: Callable
  train_step: Callable
  eval_step: Callable


# ---------------------------------------------------------------------------
# Model, optimizer, shardings, step functions
# ---------------------------------------------------------------------------


def build(config: ConfigDict, num_languages: int, mesh=None) -> Setup:
  """Mesh, abstract state, shardings and the jit'd init / train / eval functions."""
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh.to_dict())
  rules = mesh_lib.rules_tuple(config.logical_axis_rules)
  model_cfg = ModelConfig.from_config(config.model)
  objective = make_objective(config, num_languages)
  total_steps = config_lib.resolve_steps(config)
  optimizer = make_optimizer(config.optimizer, total_steps)
  seed = config.seed

  def init_fn() -> TrainState:
    model = Decoder(model_cfg, nnx.Rngs(params=seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    trainable, _ = split_params(params, objective.trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(trainable),
                      rng=jax.random.PRNGKey(seed + 1), skipped_steps=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32))

  with mesh_lib.activate(mesh, rules):
    abstract_model = nnx.eval_shape(lambda: Decoder(model_cfg, nnx.Rngs(params=seed)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
    abstract_state = jax.eval_shape(init_fn)

  replicated = mesh_lib.replicated(mesh)
  param_shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs,
                                 is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  train_shardings, _ = split_params(param_shardings, objective.trainable)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_state.opt_state, train_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                               rng=replicated, skipped_steps=replicated, consecutive_skips=replicated)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_shardings)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  accum = config.optimizer.grad_accum_steps

  def loss_fn(trainable, frozen, micro, rng):
    model = nnx.merge(graphdef, join_params(trainable, frozen))
    loss_sum, weight, sums = objective.loss_sums(model, micro, rng)
    return loss_sum, (weight, sums)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    trainable, frozen = split_params(state.params, objective.trainable)
    next_rng, step_rng = jax.random.split(state.rng)
    if accum == 1:
      (loss_sum, (weight, sums)), grads = grad_fn(trainable, frozen, batch, step_rng)
    else:
      # Micro-batch m takes rows m, m+A, m+2A...: the batch dim keeps its
      # (data, fsdp) sharding and every device works on every micro-batch.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1), batch)

      micro_rngs = jax.random.split(step_rng, accum)

      def body(carry, xs):
        (l, w, s), g = carry
        (l_i, (w_i, s_i)), g_i = grad_fn(trainable, frozen, *xs)
        return ((l + l_i, w + w_i, jax.tree.map(jnp.add, s, s_i)), jax.tree.map(jnp.add, g, g_i)), None

      shapes = jax.eval_shape(grad_fn, trainable, frozen, jax.tree.map(lambda x: x[0], micro), micro_rngs[0])
      init = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), ((shapes[0][0], *shapes[0][1]), shapes[1]))
      ((loss_sum, weight, sums), grads), _ = jax.lax.scan(body, init, (micro, micro_rngs))
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    ok = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    new_trainable = keep_if(ok, new_trainable, trainable)
    new_opt_state = keep_if(ok, new_opt_state, state.opt_state)
    skipped = (~ok).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1, params=join_params(new_trainable, frozen), opt_state=new_opt_state,
        rng=next_rng, skipped_steps=state.skipped_steps + skipped,
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1))
    out = dict(sums)
    out.update(weight=weight, loss=loss_sum / denom, grad_norm=grad_norm,
               skipped_steps=new_state.skipped_steps, consecutive_skips=new_state.consecutive_skips)
    return new_state, out

  def eval_step(params, batch):
    trainable, frozen = split_params(params, objective.trainable)
    _, (weight, sums) = loss_fn(trainable, frozen, batch, jax.random.PRNGKey(0))
    return {"lang_loss_sum": sums["lang_loss_sum"], "lang_weight": sums["lang_weight"], "weight": weight}

  batch_shardings = {k: batch_sharding for k in FIELDS}
  jit_init = jax.jit(init_fn, out_shardings=state_shardings)
  jit_train = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  jit_eval = jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings), out_shardings=replicated)

  def run_with_rules(fn):
    def wrapped(*args):
      with mesh_lib.activate(mesh, rules):
        return fn(*args)
    wrapped.lower = lambda *a: _lower(fn, mesh, rules, *a)
    return wrapped

  return Setup(config=config, mesh=mesh, model_cfg=model_cfg, graphdef=graphdef, objective=objective,
               optimizer=optimizer, total_steps=total_steps, abstract_state=abstract_state,
               state_shardings=state_shardings, batch_sharding=batch_sharding,
               init_fn=run_with_rules(jit_init), train_step=run_with_rules(jit_train),
               eval_step=run_with_rules(jit_eval))


def _lower(fn, mesh, rules, *args):
  with mesh_lib.activate(mesh, rules):
    return fn.lower(*args)


def global_batch(setup: Setup, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over (data, fsdp)."""
  out = {}
  for k in FIELDS:
    x = local[k]
    shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    out[k] = jax.make_array_from_process_local_data(setup.batch_sharding, x, shape)
  return out


def abstract_batch(setup: Setup) -> dict[str, jax.ShapeDtypeStruct]:
  d = setup.config.data
  return {k: jax.ShapeDtypeStruct((d.global_batch_size, d.seq_len), jnp.int32, sharding=setup.batch_sharding)
          for k in FIELDS}


def evaluate(setup: Setup, params, batches, languages) -> dict[str, float]:
  """Held-out loss per language (token-weighted)."""
  loss = np.zeros(len(languages))
  weight = np.zeros(len(languages))
  for local in batches:
    out = jax.device_get(setup.eval_step(params, global_batch(setup, local)))
    loss += out["lang_loss_sum"]
    weight += out["lang_weight"]
  return {lang: float(loss[i] / weight[i]) for i, lang in enumerate(languages) if weight[i] > 0}


# ---------------------------------------------------------------------------
# train_and_evaluate
# ---------------------------------------------------------------------------


def maybe_initialize_distributed() -> None:
  """Joins the multi-controller runtime when this is one of several processes.

  Every process of a multi-host run sets all three of JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
  (0 .. JAX_NUM_PROCESSES-1); tools/tpu/worker_train.sh sets them on TPU VMs
  from the TPU metadata. On a GKE TPU pod (TPU_WORKER_HOSTNAMES lists several
  hosts) jax finds them itself. JAX_INITIALIZATION_TIMEOUT (seconds, default
  300) bounds the wait for the other processes.

  Raises:
    TrainingError: a variable is missing or inconsistent, or process 0 cannot
      be reached in time; checked before anything connects, so a bad launch
      stops at once with one line instead of hanging or aborting in C++.
  """
  if jax.distributed.is_initialized():
    return
  env = os.environ
  raw_timeout = env.get("JAX_INITIALIZATION_TIMEOUT", "300")
  timeout = int(raw_timeout) if raw_timeout.isdigit() else 0
  if timeout <= 0:
    raise TrainingError(f"JAX_INITIALIZATION_TIMEOUT={raw_timeout!r} must be a positive whole number of seconds")
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  given = [name for name in names if env.get(name)]
  if not given:
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
      jax.distributed.initialize(initialization_timeout=timeout)
    return
  if len(given) < len(names):
    missing = [name for name in names if name not in given]
    raise TrainingError(
        f"{' and '.join(given)} set but {' and '.join(missing)} not: a multi-host run sets all three on every "
        "process (JAX_PROCESS_ID 0..JAX_NUM_PROCESSES-1); unset them all for a single process")
  address = env["JAX_COORDINATOR_ADDRESS"]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise TrainingError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port (process 0's address and a free port)")
  try:
    num_processes, process_id = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
  except ValueError:
    raise TrainingError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                        f"{env['JAX_PROCESS_ID']!r} must be whole numbers") from None
  if num_processes < 1:
    raise TrainingError(f"JAX_NUM_PROCESSES={num_processes} must be at least 1 (the number of processes launched)")
  if not 0 <= process_id < num_processes:
    raise TrainingError(
        f"JAX_PROCESS_ID={process_id} does not fit JAX_NUM_PROCESSES={num_processes}: ids run 0.."
        f"{num_processes - 1}, one per process; check the launch command of every host")
  if num_processes == 1:
    return
  # jax aborts the whole process (C++ LOG(FATAL)) when it cannot reach the
  # coordinator in time, so the other processes first check that process 0
  # listens, and stop with a readable error when it never does.
  if process_id > 0:
    import socket
    deadline = time.monotonic() + timeout
    while True:
      try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        break
      except OSError as e:
        if time.monotonic() > deadline:
          raise TrainingError(
              f"process {process_id} of {num_processes} could not reach process 0 at JAX_COORDINATOR_ADDRESS="
              f"{address} within {timeout} s ({e.strerror or e}); start the same command on every host "
              "or fix the address") from None
        time.sleep(0.5)
  logging.info("joining a %d-process run as process %d via %s; waiting up to %d s for the others",
               num_processes, process_id, address, timeout)
  # CPU devices of different processes reach each other through gloo (jax
  # 0.10's default, set so that no other default leaves CPU collectives
  # unimplemented); TPU and GPU runs never use it.
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in env:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes, process_id, initialization_timeout=timeout)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains per config in workdir, resuming from its checkpoints.

  Returns:
    summary: final ``step`` and ``state``, ``compile_seconds``, ``skipped_steps``,
    and per-language held-out loss ``eval_before`` / ``eval_after``.
  """
  maybe_initialize_distributed()
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "params")) and not os.path.isdir(os.path.join(workdir, "checkpoints")):
    # A workdir written by `polyglot-jax convert`: training here would overwrite its config.json.
    raise CheckpointError(f"{workdir} holds converted parameters (params/), not a training run; train in a new "
                          f"--workdir with --config.init_from={workdir}")
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))

  # ---- Data.
  data = make_data(config, workdir)
  languages = data.languages
  train_batches, held_out = data.train, data.held_out

  # ---- Model, mesh, shardings, jit'd functions.
  setup = build(config, len(languages))
  total_steps = setup.total_steps
  logging.info("mesh %s over %d devices; model %.2fM parameters", dict(setup.mesh.shape),
               setup.mesh.size, sum(x.size for x in jax.tree.leaves(setup.abstract_state.params)) / 1e6)

  # ---- Restore or initialise.
  ckpt = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.max_to_keep,
                      config.checkpoint.async_save)
  expected_shapes = shape_signature(setup.abstract_state)
  restored = ckpt.restore(setup.abstract_state, expected_shapes)
  if restored is not None:
    step, state, data_state, _ = restored
    if data_state:
      train_batches.set_state(data_state)
    else:  # A checkpoint made by `tokenizer extend`: new data, read from its start.
      logging.info("the checkpoint carries no data-iterator state; reading the data from the start")
    logging.info("resumed from %s/%d", ckpt.directory, step)
    print(f"resumed from checkpoint step {step}", flush=True)
  else:
    state = setup.init_fn()
    step = 0
    if config.init_from:
      state = _init_from(config, setup, state)
  meta = {"shapes": expected_shapes, "languages": list(languages)}

  # ---- Compile once, ahead of the loop, so compile time is reported on its own.
  t = time.perf_counter()
  compiled_step = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  compile_seconds = time.perf_counter() - t
  logging.info("compiled the train step in %.1f s", compile_seconds)

  before_path = os.path.join(workdir, "eval_before.json")
  if held_out and step == 0:
    before = evaluate(setup, state.params, held_out, languages)
    if is_main:
      with open(before_path, "w") as f:
        json.dump(before, f)
  else:
    before = json.load(open(before_path)) if os.path.exists(before_path) else None

  # ---- Loop.
  writer = metrics_lib.make_writer(workdir, "train")
  eval_writer = metrics_lib.make_writer(workdir, "eval")
  schedule = learning_rate_schedule(config.optimizer, total_steps)
  peak, peak_source = metrics_lib.peak_flops(config.metrics.peak_flops_per_device)
  flops_per_token = train_flops_per_token(setup.model_cfg, config.data.seq_len)
  tokens_per_step = config.data.global_batch_size * config.data.seq_len
  progress = metrics_lib.Progress(total_steps, step)
  preempted = {"flag": False}
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True)) \
      if _is_main_thread() else None
  logging.info("MFU peak: %.3g FLOP/s (%s)", peak, peak_source)

  profiler = StepProfiler(workdir, config.train.profile_start_step, config.train.profile_steps)
  window = _Window(len(languages))
  pending = None
  t_window = time.perf_counter()
  last_logged = step
  stop_reason = None
  try:
    while step < total_steps:
      # One process: our own SIGTERM flag. Several: only orbax's preemption
      # check, which every host answers alike at the same step (hosts that
      # saw a local signal at different steps would otherwise diverge).
      local_stop = preempted["flag"] and jax.process_count() == 1
      if local_stop or ckpt.manager.reached_preemption(step):
        stop_reason = "preempted"
        break
      if config.train.stop_after_steps and step >= config.train.stop_after_steps:
        stop_reason = "stop_after_steps"
        break
      batch = global_batch(setup, next(train_batches))
      profiler.before_step(step)
      state, step_metrics = compiled_step(state, batch)
      step += 1
      profiler.after_step(step, step_metrics)
      # Read step N-1's metrics only after step N is dispatched: the host
      # never waits on the device between steps.
      if pending is not None:
        _absorb(window, *pending, max_skips=config.optimizer.max_consecutive_skips)
      pending = (step, step_metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        _absorb(window, *pending, max_skips=config.optimizer.max_consecutive_skips)
        pending = None
        elapsed = time.perf_counter() - t_window
        steps_done = step - last_logged
        row = window.summary(languages)
        steps_per_sec = steps_done / elapsed
        tokens_per_sec = steps_per_sec * tokens_per_step
        mfu = tokens_per_sec * flops_per_token / peak if peak else 0.0
        row.update(learning_rate=float(schedule(step - 1)), tokens_per_sec=tokens_per_sec,
                   steps_per_sec=steps_per_sec, mfu=mfu)
        writer.write_scalars(step, row)
        writer.flush()
        if is_main:
          print(progress.line(step, row["loss"], steps_per_sec, tokens_per_sec, mfu), flush=True)
        window = _Window(len(languages))
        t_window, last_logged = time.perf_counter(), step
      if held_out and config.train.eval_every_steps and step % config.train.eval_every_steps == 0 \
          and step != total_steps:
        _write_eval(eval_writer, step, evaluate(setup, state.params, held_out, languages))
      ckpt.save(step, state, train_batches.get_state, meta)
    if pending is not None:
      _absorb(window, *pending, max_skips=config.optimizer.max_consecutive_skips)
  except TrainingError:
    ckpt.close()
    raise
  finally:
    profiler.stop()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  ckpt.save(step, state, train_batches.get_state, meta, force=True)
  ckpt.close()
  if stop_reason:
    writer.close()
    eval_writer.close()
    why = "SIGTERM" if stop_reason == "preempted" else "train.stop_after_steps"
    print(f"stopped by {why} at step {step}; checkpoint saved, rerun the same command to resume", flush=True)
    return {"step": step, "stopped": stop_reason, "state": state}

  summary = {"step": step, "state": state, "compile_seconds": compile_seconds,
             "skipped_steps": int(jax.device_get(state.skipped_steps))}
  if held_out:
    after = evaluate(setup, state.params, held_out, languages)
    _write_eval(eval_writer, step, after)
    summary.update(eval_before=before, eval_after=after)
    if is_main:
      with open(os.path.join(workdir, "eval_results.json"), "w") as f:
        json.dump({"step": step, "before": before, "after": after}, f, indent=2)
      print("\nheld-out loss and perplexity per language (before → after training)", flush=True)
      print(metrics_lib.language_table(languages, before, after), flush=True)
  writer.close()
  eval_writer.close()
  return summary


def _init_from(config: ConfigDict, setup: Setup, state: TrainState) -> TrainState:
  """Replaces freshly initialised parameters with those at config.init_from.

  Optimizer moments stay at their initial zeros and the step at 0: a new run
  that starts from imported weights.
  """
  from polyglot_jax import interop
  loaded = interop.load_params(config.init_from, config)
  want = {"/".join(map(str, k)): v for k, v in _flat(setup.abstract_state.params).items()}
  got = {"/".join(map(str, k)): v for k, v in _flat(loaded).items()}
  if want.keys() != got.keys():
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    raise CheckpointError(f"config.init_from='{config.init_from}' does not match the model: "
                          f"missing {missing[:5]}, unexpected {extra[:5]}")
  for name, spec in want.items():
    if tuple(got[name].shape) != tuple(spec.shape):
      raise CheckpointError(f"config.init_from='{config.init_from}': parameter {name} has shape "
                            f"{tuple(got[name].shape)}, the model wants {tuple(spec.shape)}")
  params = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, dtype=old.dtype), old.sharding),
                        loaded, state.params)
  logging.info("initialised %d parameters from %s", len(want), config.init_from)
  print(f"initialised parameters from {config.init_from}", flush=True)
  return state.replace(params=params)


def _flat(tree) -> dict:
  from flax import traverse_util
  return traverse_util.flatten_dict(tree)


def _is_main_thread() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()


class _Window:
  """Host-side sums of the metrics of one log period."""

  def __init__(self, num_languages: int):
    self.ce = 0.0
    self.z = 0.0
    self.weight = 0.0
    self.lang_loss = np.zeros(num_languages)
    self.lang_weight = np.zeros(num_languages)
    self.grad_norms: list[float] = []
    self.skipped = 0

  def add(self, m: dict) -> None:
    if np.isfinite(m["ce_sum"]):
      self.ce += float(m["ce_sum"])
      self.z += float(m["z_sum"])
      self.weight += float(m["weight"])
      self.lang_loss += m["lang_loss_sum"]
      self.lang_weight += m["lang_weight"]
      self.grad_norms.append(float(m["grad_norm"]))
    self.skipped = int(m["skipped_steps"])

  def summary(self, languages) -> dict:
    w = max(self.weight, 1.0)
    row = {"loss": self.ce / w, "z_loss": self.z / w,
           "grad_norm": float(np.mean(self.grad_norms)) if self.grad_norms else float("nan"),
           "skipped_steps": self.skipped, "tokens": self.weight}
    for i, lang in enumerate(languages):
      if self.lang_weight[i] > 0:
        row[f"loss/{lang}"] = float(self.lang_loss[i] / self.lang_weight[i])
    return row


def _absorb(window: _Window, step: int, device_metrics: dict, max_skips: int) -> None:
  m = jax.device_get(device_metrics)
  window.add(m)
  if int(m["consecutive_skips"]) >= max_skips:
    raise TrainingError(
        f"step {step}: {int(m['consecutive_skips'])} non-finite updates in a row (loss {float(m['loss'])}, "
        f"grad norm {float(m['grad_norm'])}); lower optimizer.learning_rate or check the data, "
        "then resume from the last checkpoint")


def _write_eval(writer, step: int, results: dict[str, float]) -> None:
  row = {}
  for lang, loss in results.items():
    row[f"eval/loss/{lang}"] = loss
    row[f"eval/ppl/{lang}"] = float(np.exp(loss))
  writer.write_scalars(step, row)
  writer.flush()
