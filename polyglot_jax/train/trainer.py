"""The training loop: one jit'd step for every objective, on one mesh.

Read top to bottom: join the hosts → data → build (train/build.py: model,
objective, abstract state, shardings, jit'd steps) → restore or initialise
(init_from) → compile → loop (log, eval, checkpoint, preemption) → final
evaluation. Nothing here is specific to a method: metric names, batch
fields and extra state all come from the objective.

The host never waits on the device between steps: batches are made ahead in
a producer thread (train/prefetch.py; the checkpoint keeps the data state of
the batches trained on), and each step's metrics stay on the device until
one log period later (metrics.LaggedLog). The workdir may be a ``gs://`` URL:
orbax writes there natively, every other file goes through train/paths.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.data.backends import make_data
from polyglot_jax.errors import CheckpointError, ConfigError, TrainingError
from polyglot_jax.models.flops import train_flops_per_token
from polyglot_jax.objectives.base import Objective
from polyglot_jax.train import metrics as metrics_lib
from polyglot_jax.train import paths
from polyglot_jax.train.build import Setup, abstract_batch, build, evaluate, global_batch
from polyglot_jax.train.checkpoint import Checkpointer, shape_signature
from polyglot_jax.train.distributed import maybe_initialize_distributed
from polyglot_jax.train.optimizer import learning_rate_schedule
from polyglot_jax.train.prefetch import Prefetcher
from polyglot_jax.train.profiling import StepProfiler
from polyglot_jax.train.state import TrainState

__all__ = ["Setup", "TrainingError", "abstract_batch", "build", "evaluate", "global_batch",
           "maybe_initialize_distributed", "train_and_evaluate"]

# Batches the producer thread makes ahead of the train step.
PREFETCH_BATCHES = 2
# Log periods whose metrics stay on the device before they are fetched and written.
METRICS_LAG_PERIODS = 1


def _harness(config: ConfigDict, setup: Setup, workdir: str, writer, is_main: bool):
  """The eval-harness run of ``config.evaluation`` (None when it names no tasks).

  The returned function evaluates the state's parameters on the training
  mesh, writes ``WORKDIR/evaluation/step_<N>/`` (results.json, table.txt,
  plots) and the ``harness/<task>/<metric>[/<lang>]`` scalars, and returns
  the results.
  """
  if not config.evaluation.tasks:
    return None
  import dataclasses

  import sentencepiece

  from polyglot_jax.eval import harness
  tasks = harness.parse_tasks(config.evaluation.tasks)
  for name, path in tasks:
    if not os.path.exists(path):
      raise ConfigError(f"config.evaluation.tasks: {name}={path} does not exist")
  if not config.data.tokenizer:
    raise ConfigError("config.evaluation.tasks needs config.data.tokenizer to encode the tasks")
  tokenizer = sentencepiece.SentencePieceProcessor(model_file=config.data.tokenizer)
  fields = {f.name for f in dataclasses.fields(harness.EvalOptions)}
  options = harness.EvalOptions(**{k: v for k, v in config.evaluation.items() if k in fields})

  def run(step: int, state: TrainState) -> dict:
    with mesh_lib.activate(setup.mesh, mesh_lib.rules_tuple(config.logical_axis_rules)):
      results = harness.evaluate_model(nnx.merge(setup.graphdef, state.params), tokenizer, tasks, options,
                                       max_len=config.data.seq_len, progress=is_main)
    if is_main:
      out = paths.join(workdir, "evaluation", f"step_{step}")
      if paths.is_remote(out):  # The harness writes local files (plots too); then they are copied.
        local = os.path.join(paths.local_mirror(workdir), "evaluation", f"step_{step}")
        harness.write(results, local, {"step": step})
        paths.copy_tree(local, out)
      else:
        harness.write(results, out, {"step": step})
      print(harness.table(results), flush=True)
    writer.write_scalars(step, harness.scalars(results))
    writer.flush()
    return results

  return run


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains per config in workdir, resuming from its checkpoints.

  Args:
    config: the locked run config.
    workdir: a local directory or a ``gs://BUCKET/PATH`` URL (checkpoints,
      metrics, TensorBoard events, config.json).

  Returns:
    summary: final ``step`` and ``state``, ``compile_seconds``, ``skipped_steps``,
    and the objective's per-language held-out summary metric ``eval_before`` /
    ``eval_after`` (language → value; for LM objectives the loss), plus the
    full held-out metrics ``eval_metrics_after``.
  """
  maybe_initialize_distributed()
  workdir = paths.absolute(workdir)
  if paths.isdir(paths.join(workdir, "params")) and not paths.isdir(paths.join(workdir, "checkpoints")):
    # A workdir written by `polyglot-jax convert`: training here would overwrite its config.json.
    raise CheckpointError(f"{workdir} holds converted parameters (params/), not a training run; train in a new "
                          f"--workdir with --config.init_from={workdir}")
  paths.makedirs(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    paths.write_text(paths.join(workdir, "config.json"), config_lib.to_json(config))

  # ---- Data.
  data = make_data(config, _data_workdir(config, workdir))
  languages = data.languages
  train_batches, held_out = data.train, data.held_out

  # ---- Model, objective, mesh, shardings, jit'd functions.
  setup = build(config, len(languages))
  objective = setup.objective
  total_steps = setup.total_steps
  logging.info("mesh %s over %d devices; model %.2fM parameters; objective %s", dict(setup.mesh.shape),
               setup.mesh.size, sum(x.size for x in jax.tree.leaves(setup.abstract_state.params)) / 1e6,
               objective.name)

  # ---- Restore or initialise.
  ckpt = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.max_to_keep,
                      config.checkpoint.async_save)
  expected_shapes = shape_signature(setup.abstract_state)
  restored = ckpt.restore(setup.abstract_state, expected_shapes)
  if restored is not None:
    step, state, data_state, _ = restored
    if data_state:
      train_batches.set_state(data_state)
    else:  # A checkpoint made by checkpoint surgery (tokenizer extend): new data, read from its start.
      logging.info("the checkpoint carries no data-iterator state; reading the data from the start")
    logging.info("resumed from %s/%d", ckpt.directory, step)
    print(f"resumed from checkpoint step {step}", flush=True)
  else:
    state = setup.init_fn()
    step = 0
    if config.init_from:
      state = _init_from(config, setup, state)
  meta = {"shapes": expected_shapes, "languages": list(languages), "objective": objective.name}

  # ---- Compile once, ahead of the loop, so compile time is reported on its own.
  t = time.perf_counter()
  compiled_step = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  compile_seconds = time.perf_counter() - t
  logging.info("compiled the train step in %.1f s", compile_seconds)

  writer = metrics_lib.make_writer(workdir, "train")
  eval_writer = metrics_lib.make_writer(workdir, "eval")

  def run_eval(step: int, state: TrainState, write: bool = True) -> dict[str, float]:
    row = evaluate(setup, state.params, state.extra, held_out, languages) if held_out else {}
    row.update(objective.evaluate(nnx.merge(setup.graphdef, state.params), state.extra, step))
    if row and write:
      eval_writer.write_scalars(step, {f"eval/{k}": v for k, v in row.items()})
      eval_writer.flush()
    return row

  run_harness = _harness(config, setup, workdir, eval_writer, is_main)

  before_path = paths.join(workdir, "eval_before.json")
  if held_out and step == 0:
    before = metrics_lib.per_language(run_eval(0, state, write=False), objective.summary_metric, languages)
    if is_main:
      paths.write_text(before_path, json.dumps(before))
  else:
    before = json.loads(paths.read_text(before_path)) if paths.exists(before_path) else None

  # ---- Loop.
  schedule = learning_rate_schedule(config.optimizer, total_steps)
  peak, peak_source = metrics_lib.peak_flops(config.metrics.peak_flops_per_device)
  flops_per_token = train_flops_per_token(setup.model_cfg, config.data.seq_len)
  progress = metrics_lib.Progress(total_steps, step)
  preempted = {"flag": False}
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True)) \
      if threading.current_thread() is threading.main_thread() else None
  logging.info("MFU peak: %.3g FLOP/s (%s)", peak, peak_source)

  profiler = StepProfiler(workdir, config.train.profile_start_step, config.train.profile_steps)
  max_skips = config.optimizer.max_consecutive_skips
  timer = {"t": time.perf_counter(), "step": step}  # When and at which step the last written row's period closed.

  def write_row(log_step: int, window: _Window) -> None:
    """One log period's row; the rates cover the time from the previous period's close to this one's.

    Periods are timed when the loop closes them, not when their rows are written: a row written
    early (the flush before a checkpoint) or late (the lag) still gets its own period's rate.
    """
    now = metric_log.emitting_closed_at or time.perf_counter()
    elapsed = max(now - timer["t"], 1e-9)
    steps_per_sec = (log_step - timer["step"]) / elapsed
    row = window.summary()
    tokens_per_sec = window.token_slots / elapsed  # Every position, padding included (what the chips ran).
    real_tokens_per_sec = window.real_tokens / elapsed
    mfu = tokens_per_sec * flops_per_token / peak if peak else 0.0
    # The learning rate of the last applied update: skipped steps do not
    # advance the optimizer's schedule.
    applied = max(log_step - window.skipped - 1, 0)
    row.update(learning_rate=float(schedule(applied)), tokens_per_sec=tokens_per_sec,
               real_tokens_per_sec=real_tokens_per_sec, steps_per_sec=steps_per_sec, mfu=mfu,
               mfu_real_tokens=real_tokens_per_sec * flops_per_token / peak if peak else 0.0,
               padding_fraction=1.0 - window.real_tokens / max(window.token_slots, 1.0))
    writer.write_scalars(log_step, row)
    writer.flush()
    if is_main:
      print(progress.line(log_step, row.get("loss", window.loss()), steps_per_sec, tokens_per_sec, mfu),
            flush=True)
    timer.update(t=now, step=log_step)

  metric_log = metrics_lib.LaggedLog(lambda: _Window(objective, languages),
                                     lambda window, s, m: window.absorb(s, m, max_skips=max_skips),
                                     write_row, lag=METRICS_LAG_PERIODS)
  stop_reason = None
  batches = None
  try:
    # From here only the producer thread advances train_batches; the checkpoint
    # asks `batches` for the state of the batches the steps have taken.
    batches = Prefetcher(train_batches, PREFETCH_BATCHES)
    previous_loss = None
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
      batch = global_batch(setup, next(batches))
      profiler.before_step(step)
      state, step_metrics = compiled_step(state, batch)
      # Dispatch runs at most one step ahead: wait (no transfer) for the step before this one, so the
      # device never holds more than two steps' batches and in-flight work stays bounded.
      if previous_loss is not None:
        jax.block_until_ready(previous_loss)
      previous_loss = step_metrics["loss"]
      step += 1
      profiler.after_step(step, step_metrics)
      # The step's metrics stay on the device: they are read one log period
      # later, so the host never waits on the device between steps.
      metric_log.add(step, step_metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        metric_log.close(step)
      if held_out and config.train.eval_every_steps and step % config.train.eval_every_steps == 0 \
          and step != total_steps:
        run_eval(step, state)
      if run_harness and config.evaluation.every_steps and step % config.evaluation.every_steps == 0 \
          and step != total_steps:
        run_harness(step, state)
      if ckpt.due(step):
        metric_log.flush()  # Rows written and every step checked before the checkpoint.
        ckpt.save(step, state, batches.get_state, meta)
    metric_log.flush()
  except TrainingError:
    ckpt.close()
    raise
  finally:
    if batches is not None:
      batches.close()
    profiler.stop()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  ckpt.save(step, state, batches.get_state, meta, force=True)
  ckpt.close()
  if stop_reason:
    writer.close()
    eval_writer.close()
    why = "SIGTERM" if stop_reason == "preempted" else "train.stop_after_steps"
    print(f"stopped by {why} at step {step}; checkpoint saved, rerun the same command to resume", flush=True)
    return {"step": step, "stopped": stop_reason, "state": state}

  summary = {"step": step, "state": state, "compile_seconds": compile_seconds,
             "skipped_steps": int(jax.device_get(state.skipped_steps))}
  if run_harness:
    summary["evaluation"] = run_harness(step, state)
  if held_out or type(objective).evaluate is not Objective.evaluate:
    final = run_eval(step, state)
    after = metrics_lib.per_language(final, objective.summary_metric, languages)
    summary.update(eval_before=before, eval_after=after, eval_metrics_after=final)
    if is_main:
      paths.write_text(paths.join(workdir, "eval_results.json"),
                       json.dumps({"step": step, "before": before, "after": after, "metrics": final}, indent=2))
      if after:
        print("\nheld-out loss and perplexity per language (before → after training)", flush=True)
        print(metrics_lib.language_table(languages, before, after), flush=True)
  writer.close()
  eval_writer.close()
  return summary


def _data_workdir(config: ConfigDict, workdir: str) -> str:
  """The directory the data backends may write into (the demo corpus): the workdir, or a local mirror of a URL.

  The backends write with local file calls. For a ``gs://`` workdir they get
  a local directory on every host; when the run builds the demo corpus, it is
  built once (process 0), kept in ``WORKDIR/demo_data`` and copied from there
  to every host's local directory, so all hosts read the same corpus and
  tokenizer, and a resumed run reuses them.
  """
  if not paths.is_remote(workdir):
    return workdir
  local = paths.local_mirror(workdir)
  from polyglot_jax.objectives.base import objective_class
  demo = [c for c in objective_class(config).stream_configs(config).values()
          if c.data.source == "demo" and not c.data.demo_dir]
  if not demo:
    return local
  from polyglot_jax.data import in_memory
  train_path, eval_path, spm_prefix = in_memory.demo_paths(demo[0], local)
  local_dir = os.path.dirname(train_path)
  remote = paths.join(workdir, os.path.basename(local_dir))
  names = [os.path.basename(p) for p in (train_path, eval_path, spm_prefix + ".model", spm_prefix + ".vocab")]
  is_main = jax.process_index() == 0
  stored = all(paths.exists(paths.join(remote, name)) for name in names)
  if is_main and stored:
    paths.copy_tree(remote, local_dir)
  in_memory.prepare_demo(demo[0], local)  # Process 0 builds what is missing; every host waits for it.
  if is_main and not stored:
    paths.copy_tree(local_dir, remote)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("demo corpus in the workdir")
    if not is_main:
      paths.copy_tree(remote, local_dir)
  return local


def _init_from(config: ConfigDict, setup: Setup, state: TrainState) -> TrainState:
  """Replaces freshly initialised parameters with those at config.init_from.

  Optimizer moments stay at their initial zeros and the step at 0: a new run
  that starts from imported weights. The objective's extra state (e.g. a
  frozen reference) is made again from the imported parameters.
  """
  from polyglot_jax import loading
  loaded = loading.read_params(config.init_from, config)
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
  return state.replace(params=params, extra=setup.init_extra(params))


def _flat(tree) -> dict:
  from flax import traverse_util
  return traverse_util.flatten_dict(tree)


class _Window:
  """One log period: the objective's metric window plus the trainer's own figures."""

  def __init__(self, objective, languages, skipped: int = 0):
    """An empty period for ``objective``'s metrics over ``languages``."""
    self.metrics = metrics_lib.MetricWindow(objective.metrics, languages)
    self.loss_sum = 0.0
    self.steps = 0
    self.grad_norms: list[float] = []
    self.skipped = skipped
    self.real_tokens = 0.0
    self.token_slots = 0.0

  def absorb(self, step: int, m: dict, max_skips: int) -> None:
    """Adds step ``step``'s metrics (fetched to the host); raises after ``max_skips`` non-finite updates in a row."""
    self.real_tokens += float(m["real_tokens"])
    self.token_slots += float(m["token_slots"])
    if np.isfinite(m["loss"]):
      self.metrics.add(m["outputs"])
      self.loss_sum += float(m["loss"])
      self.steps += 1
      self.grad_norms.append(float(m["grad_norm"]))
    self.skipped = int(m["skipped_steps"])
    if int(m["consecutive_skips"]) >= max_skips:
      raise TrainingError(
          f"step {step}: {int(m['consecutive_skips'])} non-finite updates in a row (loss {float(m['loss'])}, "
          f"grad norm {float(m['grad_norm'])}); lower optimizer.learning_rate or check the data, "
          "then resume from the last checkpoint")

  def loss(self) -> float:
    """Mean differentiated loss of the finite steps (for objectives that declare no "loss")."""
    return self.loss_sum / self.steps if self.steps else float("nan")

  def summary(self) -> dict:
    row = self.metrics.summary()
    row.setdefault("loss", self.loss())
    row.update(grad_norm=float(np.mean(self.grad_norms)) if self.grad_norms else float("nan"),
               skipped_steps=self.skipped)
    return row
