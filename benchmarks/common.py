"""Shared by the benchmark scripts."""

import json
import os


def write_json(result: dict, path: str) -> None:
  """Writes a benchmark's result dict to ``path`` (folders created)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)


MiB = 2**20
# The --quick model of the step benchmarks: tiny, so a run only checks that the script works.
QUICK = {"model.vocab_size": 2000, "model.d_model": 64, "model.num_layers": 2, "model.num_heads": 2,
         "model.num_kv_heads": 2, "model.mlp_dim": 128, "data.seq_len": 64, "data.global_batch_size": 2}


def parse_override(value: str):
  """A command-line override value as a Python value (int, float, bool or string)."""
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(value.lower(), value)


def step_variant(base: str, overrides: dict) -> dict:
  """The real lm train step of config file ``base`` with dotted ``overrides``, compiled and warmed up.

  Args:
    base: a config file (e.g. configs/bench.py).
    overrides: dotted key → value (Python values, not strings).

  Returns:
    dict: ``compiled``, ``state``, ``batch`` (random tokens, one document per row),
    ``config``, ``setup``, ``tokens`` (per step) and ``info`` (compile seconds, and
    XLA's memory account of the compiled step: ``temp_mib`` temporaries,
    ``live_mib`` temporaries + arguments + outputs − aliased donated buffers).
  """
  import time

  import jax
  import numpy as np

  from polyglot_jax import configs as config_lib
  from polyglot_jax.train.trainer import abstract_batch, build, global_batch
  config = config_lib.load_config(base, [])
  with config.unlocked():
    for key, value in {"objective": "lm", "checkpoint.async_save": False, **overrides}.items():
      config_lib.set_key(config, key, value, from_string=False)
  setup = build(config, num_languages=1)
  d = config.data
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, config.model.vocab_size, (d.global_batch_size, d.seq_len + 1)).astype(np.int32)
  ones = np.ones((d.global_batch_size, d.seq_len), np.int32)
  local = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": ones, "segment_ids": ones,
           "positions": np.tile(np.arange(d.seq_len, dtype=np.int32), (d.global_batch_size, 1)),
           "lang_ids": 0 * ones}
  batch = global_batch(setup, local)
  t = time.perf_counter()
  compiled = setup.train_step.lower(setup.abstract_state, abstract_batch(setup)).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  state = setup.init_fn()
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  info = {"compile_s": compile_s, "temp_mib": mem.temp_size_in_bytes / MiB,
          "live_mib": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                       - mem.alias_size_in_bytes) / MiB,
          "params_M": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6}
  return {"compiled": compiled, "state": state, "batch": batch, "config": config, "setup": setup, "info": info,
          "tokens": d.global_batch_size * d.seq_len}


def time_steps(v: dict, steps: int) -> float:
  """Median seconds of ``steps`` steps of a ``step_variant`` (its state carried forward)."""
  import statistics
  import time

  import jax
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    v["state"], m = v["compiled"](v["state"], v["batch"])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def interleave(variants: dict, rounds: int, steps: int) -> list[dict]:
  """Per round, each variant's median step seconds, the variants taking turns (A B C, A B C, ...)."""
  out = []
  for r in range(rounds):
    row = {n: time_steps(v, steps) for n, v in variants.items()}
    out.append(row)
    print(f"round {r + 1}: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in row.items()), flush=True)
  return out
