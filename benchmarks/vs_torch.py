"""Our train step vs Hugging Face transformers' LlamaForCausalLM (eager and torch.compile), interleaved in one run.

    python benchmarks/vs_torch.py [--rounds 4] [--steps 5] [--warmup 6] [--arms ours,torch_eager,torch_compile]
        [--out benchmarks/results/vs_torch.json]
    python benchmarks/vs_torch.py --quick   # a tiny model, one round: checks the script runs

The same model on both sides, at the peers' shape: d_model 512, 8 layers, 8
heads (no GQA), SwiGLU 2048, vocabulary 32000 (untied), sequence 512, batch 8,
float32, AdamW (β 0.9/0.95, weight decay 0.1 on matrices) with global-norm
clipping at 1.0, a causal LM loss over all tokens. Ours is the real train step
of `polyglot-jax train` (configs/bench.py with mlp_dim 2048); the torch side
is a plain loop: forward with labels, backward, clip, AdamW step, zero grads
(transformers' default attention, sdpa). Both run in this process on the same
cores; the arms take turns (A B C, A B C, ...) and each round times
``--steps`` steps of every arm. Before round 1 every arm runs ``--warmup``
untimed steps, in turns: torch's eager step keeps getting faster over its
first ~6 steps (its allocator and oneDNN caches fill; 575 → 654 → 696
tokens/s in the first three rounds of one run), so without them a short run
reads eager too slow. Ratios are the median over rounds of each round's
tokens/s ratio, so slow drift of the machine cancels.
Needs torch and transformers (the test extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import QUICK, step_variant, time_steps, write_json  # noqa: E402

PEER = {"model.mlp_dim": 2048}


def torch_variant(config, compiled: bool) -> dict:
  """A transformers Llama of ``config``'s shape with an AdamW train step; ``compiled`` wraps it in torch.compile."""
  import numpy as np
  import torch
  import transformers
  m, d = config.model, config.data
  torch.manual_seed(0)
  hf = transformers.LlamaConfig(
      vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.mlp_dim,
      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
      max_position_embeddings=d.seq_len, rms_norm_eps=m.norm_eps, tie_word_embeddings=m.tie_embeddings,
      rope_theta=m.rope_theta)
  model = transformers.LlamaForCausalLM(hf).float().train()
  o = config.optimizer
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
  rest = [p for n, p in model.named_parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(o.b1, o.b2), eps=o.eps)
  rng = np.random.default_rng(0)
  tokens = torch.from_numpy(rng.integers(4, m.vocab_size, (d.global_batch_size, d.seq_len)).astype(np.int64))

  def step():
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  fn = torch.compile(step) if compiled else step
  t = time.perf_counter()
  fn()  # Warm-up (and the compile).
  return {"step": fn, "tokens": d.global_batch_size * d.seq_len, "info": {"first_step_s": time.perf_counter() - t}}


def time_torch(v: dict, steps: int) -> float:
  """Median seconds of ``steps`` torch train steps."""
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    v["step"]()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py")
  parser.add_argument("--arms", default="ours,torch_eager,torch_compile")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=6, help="untimed steps of every arm before round 1")
  parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: the CPU count")
  parser.add_argument("--quick", action="store_true", help="tiny model, one round of 2 steps")
  parser.add_argument("--out", default="benchmarks/results/vs_torch.json")
  args = parser.parse_args()
  import jax
  import torch
  torch.set_num_threads(args.threads or os.cpu_count())
  overrides = {**PEER, **(QUICK if args.quick else {})}
  if args.quick:
    args.rounds, args.steps, args.warmup = 1, 2, 1
    if args.out == parser.get_default("out"):
      args.out = "benchmarks/results/vs_torch_quick.json"
  arms = [a for a in args.arms.split(",") if a]
  print("compiling ours ...", flush=True)
  ours = step_variant(args.config, overrides)
  config = ours["config"]
  variants = {}
  for arm in arms:
    if arm == "ours":
      variants[arm] = ours
    elif arm in ("torch_eager", "torch_compile"):
      print(f"building {arm} ...", flush=True)
      variants[arm] = torch_variant(config, arm == "torch_compile")
    else:
      raise SystemExit(f"--arms: unknown arm '{arm}'; use ours, torch_eager, torch_compile")
  def time_arm(arm, v, steps):
    return time_steps(v, steps) if arm == "ours" else time_torch(v, steps)

  for w in range(args.warmup):
    took = {arm: time_arm(arm, v, 1) for arm, v in variants.items()}
    print(f"warm-up {w + 1}/{args.warmup}: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in took.items()),
          flush=True)
  rounds = []
  for r in range(args.rounds):
    row = {arm: time_arm(arm, v, args.steps) for arm, v in variants.items()}
    rounds.append(row)
    print(f"round {r + 1}: " + ", ".join(f"{n} {v['tokens'] / row[n]:.0f} tok/s" for n, v in variants.items()),
          flush=True)
  tokens = ours["tokens"]
  median = {n: statistics.median(row[n] for row in rounds) for n in variants}
  ratios = {f"ours/{n}": statistics.median(row[n] / row["ours"] for row in rounds)
            for n in variants if n != "ours" and "ours" in variants}
  print(f"\n{'arm':<14} {'step ms':>8} {'tokens/s':>9}")
  for n in variants:
    print(f"{n:<14} {median[n] * 1000:>8.0f} {tokens / median[n]:>9.0f}")
  for name, r in ratios.items():
    print(f"{name}: {r:.3f}× tokens/s (median of per-round ratios)")
  write_json({"command": "python benchmarks/vs_torch.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "overrides": overrides, "rounds_s": rounds, "median_s": median,
              "tokens_per_s": {n: tokens / median[n] for n in variants}, "ratios": ratios,
              "ours_compile_s": ours["info"]["compile_s"],
              "torch_first_step_s": {n: v["info"]["first_step_s"] for n, v in variants.items() if n != "ours"}},
             args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
