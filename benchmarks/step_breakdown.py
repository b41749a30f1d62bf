"""Where the train step's time goes: each part timed alone (forward + backward), interleaved, against the whole step.

    python benchmarks/step_breakdown.py [--config configs/bench.py] [--rounds 3] [--steps 5] [--config.a.b=v ...]
    python benchmarks/step_breakdown.py --quick   # a tiny model, one round: checks the script runs

A trace viewer needs the profile plugin; this script instead compiles each part
of the step as its own jitted function, with the step's shapes, and times
them in turns (part 1, part 2, ..., the step; again): value-and-grad of the
sum of each part's output over its inputs and parameters, so the backward
pass is included.

| part | what is timed |
|---|---|
| ``attention`` × layers | attn_norm → q/k/v projections, RoPE, the attention kernel (``model.attention_impl``), output projection |
| ``attention_core`` × layers | the attention kernel alone, on given q/k/v |
| ``mlp`` × layers | mlp_norm → SwiGLU |
| ``head_loss`` | final norm → output head → cross-entropy loss sum (the lm objective's ``lm_sums``: chunked or full logits) |
| ``embed`` | the embedding gather (and its scatter-add gradient) |
| ``optimizer`` | the optimizer update alone (clipping, AdamW) on gradients shaped like the parameters |
| ``step`` | the real train step (`polyglot-jax train`'s code) |

The per-layer parts are multiplied by the layer count. The parts' sum is not
the step: XLA fuses across part boundaries, and the step also holds the
residual adds and the metrics. The table gives each part's share of the
step, to show what to work on first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import QUICK, parse_override, step_variant, time_steps, write_json  # noqa: E402
from polyglot_jax.cli import _split_config_overrides  # noqa: E402


def part_functions(v: dict) -> dict:
  """name → (jitted value-and-grad function, its arguments, multiplier) for the parts of the step."""
  from flax import nnx

  from polyglot_jax.models.attention import attend
  from polyglot_jax.models.layers import rope_tables
  from polyglot_jax.objectives.lm import HeadInputs, chunk_size_for, lm_sums
  setup, config = v["setup"], v["config"]
  d, cfg = config.data, setup.model_cfg
  b, length = d.global_batch_size // config.optimizer.grad_accum_steps, d.seq_len
  params = jax.tree.map(jnp.copy, v["state"].params)  # The step donates (frees) the state's own buffers.
  model = nnx.merge(setup.graphdef, params)
  if cfg.scan_layers:
    raise SystemExit("step_breakdown: give --config.model.scan_layers=false (parts are timed per layer)")
  block = model.blocks[0]
  graphdef_block, block_params = nnx.split(block)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, length, cfg.d_model)).astype(np.float32))
  seg = jnp.ones((b, length), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(length), (b, length))
  cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_theta)
  tokens = jnp.asarray(rng.integers(4, cfg.vocab_size, (b, length)).astype(np.int32))

  def vg(fn, inputs: int = 2):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(inputs))))

  def attention(p, x):
    blk = nnx.merge(graphdef_block, p)
    return blk.attn(blk.attn_norm(x), cos, sin, seg)

  def mlp(p, x):
    blk = nnx.merge(graphdef_block, p)
    return blk.ffn(blk.mlp_norm(x), seg)[0]

  q = jnp.asarray(rng.normal(size=(b, length, cfg.num_heads, cfg.head_dim)).astype(np.float32))
  kv = jnp.asarray(rng.normal(size=(b, length, cfg.num_kv_heads, cfg.head_dim)).astype(np.float32))

  def attention_core(q, k, v):
    return attend(q, k, v, seg, cfg.attention_impl, cfg.attention_block)

  graphdef_model, _ = nnx.split(model)

  def head_loss(p, h):
    m = nnx.merge(graphdef_model, p)
    hidden = m.final_norm(h)
    chunk = chunk_size_for(m, b * length)
    logits = HeadInputs(hidden, m.head(), chunk) if chunk else m.logits(hidden)
    batch = {"targets": tokens, "loss_weights": jnp.ones((b, length), jnp.float32),
             "lang_ids": jnp.zeros((b, length), jnp.int32)}
    return lm_sums(logits, batch, 1, config.optimizer.z_loss)[0]  # The lm objective's loss sum.

  def embed(p, dummy):
    m = nnx.merge(graphdef_model, p)
    return m.embed(tokens) * dummy

  opt = setup.optimizer
  parts = {
      "attention": (vg(attention), (block_params, x), cfg.num_layers),
      "attention_core": (vg(attention_core, 3), (q, kv, kv), cfg.num_layers),
      "mlp": (vg(mlp), (block_params, x), cfg.num_layers),
      "head_loss": (vg(head_loss), (params, x), 1),
      "embed": (vg(embed), (params, jnp.ones((), jnp.float32)), 1),
  }
  # The update over every parameter (the trainer's frozen split is not applied here).
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)
  parts["optimizer"] = (jax.jit(opt.update), (grads, opt.init(params), params), 1)
  return parts


def time_part(fn, args, steps: int) -> float:
  """Median seconds of ``steps`` calls of ``fn(*args)``."""
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  rest, overrides = _split_config_overrides(sys.argv[1:])
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/step_breakdown.json")
  args = parser.parse_args(rest)
  values = {k: parse_override(val) for k, val in (o.split("=", 1) for o in overrides)}
  if args.quick:
    values = {**QUICK, **values}
    args.rounds, args.steps = 1, 2
    if args.out == parser.get_default("out"):
      args.out = "benchmarks/results/step_breakdown_quick.json"
  print("compiling the step ...", flush=True)
  v = step_variant(args.config, values)
  parts = part_functions(v)
  for name, (fn, a, _) in parts.items():
    print(f"compiling {name} ...", flush=True)
    jax.block_until_ready(fn(*a))
  rounds = []
  for r in range(args.rounds):
    row = {name: time_part(fn, a, args.steps) for name, (fn, a, _) in parts.items()}
    row["step"] = time_steps(v, args.steps)
    rounds.append(row)
    print(f"round {r + 1}: " + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in row.items()), flush=True)
  median = {n: statistics.median(row[n] for row in rounds) for n in rounds[0]}
  step = median["step"]
  print(f"\n{'part':<16} {'ms once':>9} {'× count':>8} {'ms total':>9} {'share of step':>14}")
  shares = {}
  for name, (_, _, count) in parts.items():
    total = median[name] * count
    shares[name] = total / step
    print(f"{name:<16} {median[name] * 1000:>9.1f} {count:>8} {total * 1000:>9.1f} {shares[name]:>14.1%}")
  print(f"{'step':<16} {step * 1000:>9.1f} {1:>8} {step * 1000:>9.1f} {1:>14.1%}")
  summed = sum(median[n] * parts[n][2] for n in parts if n != "attention_core")
  print(f"sum of parts (without attention_core, which is inside attention): {summed / step:.1%} of the step")
  write_json({"command": "python benchmarks/step_breakdown.py " + " ".join(sys.argv[1:]),
              "devices": [str(d) for d in jax.devices()], "overrides": values, "rounds_s": rounds,
              "median_s": median, "share_of_step": shares,
              "counts": {n: c for n, (_, _, c) in parts.items()}}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
