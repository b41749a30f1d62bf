"""Greedy decoding throughput: KV cache vs full recompute vs Hugging Face transformers.

    python benchmarks/decode.py [--config configs/bench.py] [--new_tokens 256] [--batch 8]
        [--min_prompt 16] [--max_prompt 64] [--rounds 2] [--recompute_steps 16] [--config.model.X=...]

Builds a random Hugging Face ``LlamaForCausalLM`` of the config's model shape
(default: the bench model, d 512, 8 layers, vocab 32000), saves it as
safetensors and loads ours from that directory with ``polyglot_jax.load``, so
both sides hold the same float32 weights. The prompts are ``--batch`` random
token lists of ragged lengths from ``--min_prompt`` to ``--max_prompt``.
Measured, all greedy, ``--new_tokens`` tokens per prompt:

- ``kv_cache_unrolled`` / ``kv_cache_scan``: ``decode.generate`` (prefill +
  one-token steps over the KV cache, one jit'd call) with the layers
  unrolled and with them scanned (``polyglot_jax.load`` of a Hugging Face
  directory scans them; the unrolled copy holds the same arrays). The
  config's layout (bench: unrolled) is the headline ``kv_cache``. The first
  call (compile + one run) is timed apart and reported as it is.
- ``recompute``: no cache; every step is a jit'd forward over a fixed-width
  buffer (prompt bucket + new tokens, right-padded) and an argmax at each
  row's last real position. A step costs the same at every length, so only
  ``--recompute_steps`` steps are timed (0: all of them) and tokens/s is
  per timed step.
- ``hf``: ``transformers`` ``generate(do_sample=False)`` on CPU torch
  (eager, default attention, dynamic cache), the whole batch at once,
  left-padded with an attention mask.

They run in interleaved rounds (``--rounds``; ours and Hugging Face in
alternating order, A B then B A) so the shared machine's drift hits them
alike. tokens/s is generated tokens (batch × new tokens) over the
wall time of a call, prefill included: the median call, and the best
(fastest) call, the one least disturbed by other work on a shared machine.
Also checks that our greedy tokens equal Hugging Face's (per prompt:
identical, or the first differing position), the recompute's for the steps
it ran, and each other's across the two layouts.
Prints a table and writes JSON (default benchmarks/results/decode.json).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time

sys.modules.setdefault("triton", None)  # CPU torch never needs it (see tests/conftest.py).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import polyglot_jax  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
from polyglot_jax import configs as config_lib  # noqa: E402
from polyglot_jax import decode  # noqa: E402
from polyglot_jax import mesh as mesh_lib  # noqa: E402
from polyglot_jax.cli import _split_config_overrides  # noqa: E402
from polyglot_jax.decode.generate import LENGTH_BUCKET  # noqa: E402
from polyglot_jax.interop.hf_config import resolved_model  # noqa: E402
from polyglot_jax.interop.workdir import unstack  # noqa: E402
from polyglot_jax.models.config import ModelConfig  # noqa: E402
from polyglot_jax.models.decoder import Decoder  # noqa: E402


def hf_llama(model_cfg, max_positions: int, seed: int):
  """A random transformers LlamaForCausalLM of config.model's shape (float32, eval mode)."""
  import torch
  import transformers
  m = resolved_model(model_cfg)
  if model_cfg.qkv_bias:
    raise SystemExit("decode.py builds a Llama model; config.model.qkv_bias must be False")
  hf_cfg = transformers.LlamaConfig(
      vocab_size=m["vocab_size"], hidden_size=m["d_model"], intermediate_size=m["mlp_dim"],
      num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"], num_key_value_heads=m["num_kv_heads"],
      head_dim=m["head_dim"], rope_theta=m["rope_theta"], rms_norm_eps=m["norm_eps"],
      tie_word_embeddings=m["tie_embeddings"], max_position_embeddings=max_positions)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  # Every row is decoded for exactly --new_tokens tokens: no EOS stop; pad id for the left padding.
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def unrolled(loaded):
  """The loaded model re-laid with unrolled layers (``polyglot_jax.load`` of an HF directory scans them)."""
  cfg = ModelConfig.from_config({**loaded.config.model.to_dict(), "scan_layers": False})
  with mesh_lib.activate(mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]), config_lib.DEFAULT_RULES):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0))), nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, unstack(loaded.params)))
  return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnums=(2,))
def _recompute_step(graphdef, state, tokens_BxW, lengths_B):
  """One greedy step without a cache: full forward, argmax after each row's last real token."""
  model = nnx.merge(graphdef, state)
  b, w = tokens_BxW.shape
  segments = (jnp.arange(w)[None, :] < lengths_B[:, None]).astype(jnp.int32)
  h_BxWxE = model.hidden_states(tokens_BxW, segments)
  rows = jnp.arange(b)
  last_BxE = h_BxWxE[rows, lengths_B - 1]
  nxt = jnp.argmax(model.logits(last_BxE[:, None])[:, 0], axis=-1).astype(jnp.int32)
  return tokens_BxW.at[rows, lengths_B].set(nxt), lengths_B + 1, nxt


def recompute(model, prompts, width: int, steps: int) -> tuple[float, list[list[int]]]:
  """(seconds for ``steps`` recompute steps, the tokens they chose per prompt)."""
  graphdef, state = nnx.split(model)
  tokens = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  tokens, lengths = jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32)
  chosen = []
  t = time.perf_counter()
  for _ in range(steps):
    tokens, lengths, nxt = _recompute_step(graphdef, state, tokens, lengths)
    chosen.append(nxt)
  jax.block_until_ready(tokens)
  seconds = time.perf_counter() - t
  return seconds, np.stack([np.asarray(c) for c in chosen], axis=1).tolist()


def hf_generate(model, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
  """(seconds, new tokens per prompt) of transformers' batched greedy generate, left-padded."""
  import torch
  width = max(len(p) for p in prompts)
  ids = torch.zeros((len(prompts), width), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = torch.tensor(p)
    mask[i, width - len(p):] = 1
  t = time.perf_counter()
  with torch.inference_mode():
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens)
  seconds = time.perf_counter() - t
  return seconds, out[:, width:].tolist()


def ours_generate(model, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
  t = time.perf_counter()
  out = decode.generate(model, prompts, new_tokens)  # Returns host lists: the call has finished.
  return time.perf_counter() - t, out


def first_difference(a: list[int], b: list[int]) -> int | None:
  """The first position where two token lists differ (None: identical)."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def main(argv=None) -> dict:
  rest, overrides = _split_config_overrides(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/bench.py", help="the model shape comes from config.model")
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8, help="number of prompts, decoded as one batch")
  parser.add_argument("--min_prompt", type=int, default=16)
  parser.add_argument("--max_prompt", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (each runs every decoder)")
  parser.add_argument("--recompute_steps", type=int, default=16, help="recompute steps timed per round; 0: all")
  parser.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results/decode.json")
  args = parser.parse_args(rest)
  import torch
  import transformers
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  config = config_lib.load_config(args.config, overrides)

  # ---- Prompts, and the two models on the same weights.
  rng = np.random.default_rng(args.seed)
  lengths = np.linspace(args.min_prompt, args.max_prompt, args.batch).round().astype(int).tolist()
  prompts = [rng.integers(4, config.model.vocab_size, n).tolist() for n in lengths]
  prompt_bucket = max(LENGTH_BUCKET, -(-max(lengths) // LENGTH_BUCKET) * LENGTH_BUCKET)
  width = prompt_bucket + args.new_tokens
  hf = hf_llama(config.model, max_positions=max(2048, width), seed=args.seed)
  with tempfile.TemporaryDirectory() as hf_dir:
    hf.save_pretrained(hf_dir, safe_serialization=True)
    loaded = polyglot_jax.load(hf_dir, dtype="float32", tokenizer=False)
  # Both layer layouts decode; the config's (configs/bench.py: unrolled) is the headline ``kv_cache``.
  models = {"kv_cache_unrolled": unrolled(loaded), "kv_cache_scan": loaded.model}
  main_key = "kv_cache_scan" if config.model.scan_layers else "kv_cache_unrolled"
  params_m = sum(x.size for x in jax.tree.leaves(loaded.params)) / 1e6
  steps = args.recompute_steps or args.new_tokens

  # ---- Compile (first calls), then interleaved rounds.
  first_call_s, tokens = {}, {}
  for key, model in models.items():
    first_call_s[key], tokens[key] = ours_generate(model, prompts, args.new_tokens)
  t = time.perf_counter()
  # Two steps: the second call's inputs are the first's outputs (committed arrays), a second jit cache entry.
  recompute(models[main_key], prompts, width, 2)
  recompute_compile_s = time.perf_counter() - t
  hf_generate(hf, prompts, 2)  # torch's first-call warm-up.
  times = {**{key: [] for key in models}, "recompute": [], "hf": []}
  loads = {key: [] for key in times}  # 1-minute load average after each call: how busy the machine was.
  for r in range(args.rounds):
    order = list(models) + ["hf"]
    for key in order if r % 2 == 0 else order[::-1]:  # A B, then B A: drift hits both sides alike.
      if key == "hf":
        s, tokens["hf"] = hf_generate(hf, prompts, args.new_tokens)
      else:
        s, out = ours_generate(models[key], prompts, args.new_tokens)
        assert out == tokens[key], "decode.generate is not deterministic across calls"
      times[key].append(s)
      loads[key].append(os.getloadavg()[0])
    s, tokens["recompute"] = recompute(models[main_key], prompts, width, steps)
    times["recompute"].append(s)
    loads["recompute"].append(os.getloadavg()[0])
    print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
          + f" (load average {os.getloadavg()[0]:.1f})", flush=True)

  # ---- Figures.
  generated = args.batch * args.new_tokens
  median = {k: float(np.median(v)) for k, v in times.items()}
  best = {k: float(np.min(v)) for k, v in times.items()}
  tokens_per_call = {k: args.batch * steps if k == "recompute" else generated for k in times}
  tps = {k: tokens_per_call[k] / median[k] for k in times}
  tps_best = {k: tokens_per_call[k] / best[k] for k in times}
  ours_tokens = tokens[main_key]
  hf_diff = [first_difference(o, h) for o, h in zip(ours_tokens, tokens["hf"])]
  recompute_diff = [first_difference(o[:steps], c) for o, c in zip(ours_tokens, tokens["recompute"])]
  result = {
      "command": "python benchmarks/decode.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "config": args.config, "overrides": overrides,
      "model": {**resolved_model(config.model), "params_M": params_m, "dtype": "float32"},
      "kv_cache": main_key,
      "batch": args.batch, "prompt_lengths": lengths, "prompt_bucket": prompt_bucket, "new_tokens": args.new_tokens,
      "recompute_width": width, "recompute_steps_timed": steps, "rounds": args.rounds,
      "hf_batching": "one batched generate call, left padding + attention_mask",
      "jax": jax.__version__, "jax_devices": [str(d) for d in jax.devices()],
      "device_kind": jax.devices()[0].device_kind, "torch": torch.__version__,
      "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
      "cpu_count": os.cpu_count(), "machine": platform.machine(),
      "first_call_s": first_call_s,
      "recompute_compile_s": recompute_compile_s,
      "times_s": times, "load_avg_1m_after_call": loads, "median_s": median, "best_s": best, "tokens_per_s": tps, "tokens_per_s_best": tps_best,
      "kv_cache_over_recompute": tps[main_key] / tps["recompute"],
      "kv_cache_over_hf": tps[main_key] / tps["hf"],
      "kv_cache_over_hf_best": tps_best[main_key] / tps_best["hf"],
      "kv_cache_over_hf_per_round": [h / o for o, h in zip(times[main_key], times["hf"])],
      "layouts_agree": tokens["kv_cache_unrolled"] == tokens["kv_cache_scan"],
      "hf_agreement_first_difference": hf_diff,
      "hf_agreement_prompts_identical": sum(d is None for d in hf_diff),
      "recompute_agreement_first_difference": recompute_diff,
  }
  print(f"\n{'decoder':<20}{'tokens/s':>10}{'best':>8}{'median call':>13}{'× ' + main_key:>22}")
  for key in times:
    note = f"   ({steps} of {args.new_tokens} steps timed)" if key == "recompute" else ""
    print(f"{key:<20}{tps[key]:>10.1f}{tps_best[key]:>8.1f}{median[key]:>12.2f}s{tps[key] / tps[main_key]:>22.3f}{note}")
  print("\nfirst call (compile + one run, before the rounds): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in first_call_s.items())
        + f"; recompute compile {recompute_compile_s:.1f} s")
  print(f"{main_key} / recompute {result['kv_cache_over_recompute']:.1f}×; {main_key} / hf "
        f"{result['kv_cache_over_hf']:.2f}× median, {result['kv_cache_over_hf_best']:.2f}× best (per round {', '.join(f'{x:.2f}' for x in result['kv_cache_over_hf_per_round'])})")
  print(f"greedy tokens equal to hf: {result['hf_agreement_prompts_identical']}/{args.batch} prompts over "
        f"{args.new_tokens} tokens (first difference per prompt: {hf_diff}); to recompute over {steps} steps: "
        f"{sum(d is None for d in recompute_diff)}/{args.batch}; scan == unrolled: {result['layouts_agree']}")
  write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
