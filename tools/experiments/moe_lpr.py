"""MoE-LPR (Zhou et al. 2024) vs full fine-tuning: grow a dense model into new languages (CPU, minutes).

    python tools/experiments/moe_lpr.py --out /tmp/moe_lpr_exp            # the full run, 7.6 min on 2 cores
    python tools/experiments/moe_lpr.py --out /tmp/moe_lpr_quick --quick  # every stage in a few steps, ~2 min
    python tools/experiments/moe_lpr.py --corpus ntrex --out /tmp/moe_lpr_ntrex  # NTREX-128 news, 9.5 min on 2 cores
    python tools/experiments/moe_lpr.py --corpus ntrex --out /tmp/moe_lpr_ntrex_quick --quick  # 2.4 min

The full run's time is estimated from the smoke run and a 500-step base, on 2 CPU cores:
dense 2.3-4 steps/s, MoE stage 1 (4 experts, top-2, dropless) 0.7-1.4 steps/s, review
1.1-2.2 steps/s; 500 + 250 + 250 + 40 steps plus ~80 s of compiles, evaluations, data
and routing.

Data: the project's demo corpus (data/demo_corpus.py: Django's human translations and
CLDR names, parallel held-out split). Original languages eng, fra, deu, spa (Latin script);
new languages rus, zho, hin (Cyrillic, Han, Devanagari). One SentencePiece tokenizer is
trained on the training text of all seven, so the new languages are encodable from the
start, but the base never reads them (``--base_new_weight`` gives it a little, like the
paper's base models, which knew the new languages weakly).

``--corpus ntrex`` (opt-in; the directory ``../shared/corpora/ntrex128`` next to the repo):
NTREX-128's line-aligned news text (newstest2019-ref.<lang>.txt, eng = eng-US, zho = zho-CN,
1997 lines each), one record per line; the last ``--n_eval`` lines (the same line ids in
every language) are held out, the rest train, and the replay set is the first
``--review_docs`` training lines of every language.

Arms (one shape: ``--d_model`` × ``--layers``, seq 128, batch 16):
- ``base``: dense LM on the original languages, ``--base_steps``;
- ``full_ft``: every parameter of base trained on the new languages, ``--ft_steps``;
- ``moe_stage1``: base upcycled (``polyglot-jax moe upcycle``: 4 experts, top-2, expert 0 =
  the dense FFN on every layer), then ``moe_lpr`` stage 1 on the new languages for the same
  ``--ft_steps``: experts 1..3 and the router train, everything else (expert 0, attention,
  embeddings, norms) is frozen;
- ``moe_lpr``: moe_stage1 + stage 2 review, ``--review_steps`` router-only steps of
  LM + γ·LPR on a replay set of the first ``--review_docs`` training documents of every
  language, original and new (~3% of stage 1's tokens; the paper used under 1%).

Reported per arm: held-out loss and perplexity per language (the same held-out rows for
every arm), the mean over the original and over the new languages, ``orig/base`` (mean
original loss relative to base: 1.00 = nothing forgotten) and ``new gain/full_ft`` (the
share of full fine-tuning's drop in new-language loss that the arm gets). ``polyglot-jax
moe routing`` runs on moe_stage1 and moe_lpr over the held-out documents
(OUT/routing_<arm>/routing.png: after review the original languages should route to
expert 0). Writes OUT/results.json and prints the tables. Rerunning with the same OUT
resumes: finished arms are evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

ORIGINAL = ("eng", "fra", "deu", "spa")
NEW = ("rus", "zho", "hin")
NTREX = os.path.join(os.path.dirname(REPO), "shared", "corpora", "ntrex128")
NTREX_NAMES = {"eng": "eng-US", "zho": "zho-CN"}


def write_jsonl(path: str, records) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return path


def read_ntrex(languages, n_eval: int) -> tuple[list[dict], list[dict]]:
  """NTREX-128 lines as records: all but the last ``n_eval`` lines train, those are held out (parallel)."""
  train, held_out = [], []
  for lang in languages:
    with open(os.path.join(NTREX, f"newstest2019-ref.{NTREX_NAMES.get(lang, lang)}.txt"), encoding="utf-8") as f:
      lines = [line.strip() for line in f]
    train += [{"text": t, "lang": lang} for t in lines[:-n_eval] if t]
    held_out += [{"text": t, "lang": lang} for t in lines[-n_eval:] if t]
  return train, held_out


def prepare(out: str, languages, review_docs: int, vocab: int, corpus: str = "demo", n_eval: int = 200) -> dict:
  """The corpus restricted to ``languages``, the replay set and a tokenizer trained on all of them."""
  from polyglot_jax.data.demo_corpus import build_demo_corpus
  from polyglot_jax.tokenizer.train import train_sentencepiece
  root = os.path.join(out, "data")
  done = os.path.join(root, "prepared.json")
  if os.path.exists(done):
    info = json.load(open(done))
    if info.get("corpus", "demo") != corpus:
      sys.exit(f"{out} holds a run on --corpus {info.get('corpus', 'demo')}, not {corpus}; use another --out")
    return info
  if corpus == "ntrex":
    train, held_out = read_ntrex(languages, n_eval)
  else:
    demo = os.path.join(root, "demo_corpus")
    if not os.path.exists(os.path.join(demo, "eval.jsonl")):
      build_demo_corpus(demo)
    read = lambda name: [r for r in map(json.loads, open(os.path.join(demo, name), encoding="utf-8"))
                         if r["lang"] in languages]
    train, held_out = read("train.jsonl"), read("eval.jsonl")
  replay, taken = [], {}
  for r in train:
    if taken.get(r["lang"], 0) < review_docs:
      replay.append(r)
      taken[r["lang"]] = taken.get(r["lang"], 0) + 1
  tokenizer = train_sentencepiece([(r["text"], r["lang"]) for r in train], os.path.join(root, "spm"), vocab)
  info = {"corpus": corpus, "train": write_jsonl(os.path.join(root, "train.jsonl"), train),
          "eval": write_jsonl(os.path.join(root, "eval.jsonl"), held_out),
          "replay": write_jsonl(os.path.join(root, "replay.jsonl"), replay), "tokenizer": tokenizer, "vocab": vocab,
          "train_docs": {c: sum(r["lang"] == c for r in train) for c in languages},
          "eval_docs": {c: sum(r["lang"] == c for r in held_out) for c in languages}, "replay_docs": taken}
  json.dump(info, open(done, "w"), indent=2)
  return info


def make_config(info: dict, args, steps: int, lr: float, weights: dict, train_file: str, init_from: str = ""):
  """A locked-to-be config: the arm's data mixture over all seven languages (fixed language ids)."""
  from polyglot_jax import configs as config_lib
  config = config_lib.default_config()
  m = config.model
  m.vocab_size = (info["vocab"] + 127) // 128 * 128
  m.d_model, m.num_layers, m.num_heads, m.num_kv_heads, m.mlp_dim = args.d_model, args.layers, 4, 2, 4 * args.d_model
  m.tie_embeddings = True
  d = config.data
  d.source = "jsonl"
  d.tokenizer = info["tokenizer"]
  d.train_files = (train_file,)
  d.eval_files = (info["eval"],)
  d.languages = ORIGINAL + NEW  # Stage 2 matches language ids against config.moe_lpr.original_languages.
  d.mixture.method = "weights"
  d.mixture.weights = tuple((code, w) for code, w in weights.items() if w > 0)
  d.seq_len = 128
  d.global_batch_size = 16
  d.eval_max_rows = 0  # Every held-out row, the same rows in every arm.
  config.optimizer.learning_rate = lr
  config.optimizer.warmup_steps = max(1, min(30, steps // 10))
  config.optimizer.weight_decay = 0.01
  config.train.num_steps = steps
  config.train.log_every_steps = max(1, min(50, steps // 4))
  config.train.eval_every_steps = args.eval_every if args.eval_every < steps else 0  # Held-out curves: overfitting.
  config.checkpoint.every_steps = 100000
  config.checkpoint.max_to_keep = 1
  config.checkpoint.async_save = False
  config.metrics.peak_flops_per_device = 1e11
  config.seed = args.seed
  config.init_from = init_from
  return config


def train(config, workdir: str, name: str) -> dict:
  """Runs ``train_and_evaluate`` (resuming a finished arm only re-evaluates it); returns its summary and time."""
  from polyglot_jax import configs as config_lib
  from polyglot_jax import loading
  from polyglot_jax.train.trainer import train_and_evaluate
  loading.apply_init_from(config)  # Shape and MoE settings from the checkpoint started from.
  config_lib.validate(config)
  t = time.perf_counter()
  summary = train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - t
  steps = config.train.num_steps
  print(f"[{name}] {steps} steps in {seconds:.0f} s (compile {summary.get('compile_seconds', 0):.0f} s)", flush=True)
  return {"summary": summary, "seconds": seconds, "steps": steps}


def held_out(run: dict) -> dict:
  """language → {"loss", "ppl"} after training, and the loss before it."""
  s = run["summary"]
  metrics = s.get("eval_metrics_after", {})
  return {code: {"loss": s["eval_after"].get(code), "ppl": metrics.get(f"ppl/{code}"),
                 "loss_before": (s.get("eval_before") or {}).get(code)} for code in ORIGINAL + NEW}


def curve(workdir: str) -> list[dict]:
  """The held-out evaluations during training: step, mean loss over the original and over the new languages."""
  path = os.path.join(workdir, "eval_metrics.jsonl")
  rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
  return [{"step": r["step"], "orig": mean(r[f"eval/loss/{c}"] for c in ORIGINAL),
           "new": mean(r[f"eval/loss/{c}"] for c in NEW)} for r in rows]


def mean(values) -> float:
  values = list(values)
  return sum(values) / len(values)


def summarise(arms: dict) -> dict:
  """Per arm: means over original and new languages, orig/base and new gain/full_ft."""
  out = {}
  base = arms["base"]["held_out"]
  ft = arms.get("full_ft", {}).get("held_out")
  base_orig = mean(base[c]["loss"] for c in ORIGINAL)
  base_new = mean(base[c]["loss"] for c in NEW)
  ft_new = mean(ft[c]["loss"] for c in NEW) if ft else None
  for name, arm in arms.items():
    h = arm["held_out"]
    orig, new = mean(h[c]["loss"] for c in ORIGINAL), mean(h[c]["loss"] for c in NEW)
    gain = (base_new - new) / (base_new - ft_new) if ft_new is not None and base_new != ft_new else None
    out[name] = {"orig_mean_loss": orig, "new_mean_loss": new, "orig_vs_base": orig / base_orig,
                 "new_gain_vs_full_ft": gain}
  return out


def format_tables(arms: dict, summary: dict, routing_results: dict) -> str:
  codes = ORIGINAL + NEW
  head = "| arm | " + " | ".join(codes) + " | orig mean | new mean | orig/base | new gain/full_ft |"
  rule = "|---" * (len(codes) + 5) + "|"
  lines = ["held-out loss (perplexity) per language; original: " + ", ".join(ORIGINAL) + "; new: " + ", ".join(NEW),
           head, rule]
  for name, arm in arms.items():
    h, s = arm["held_out"], summary[name]
    gain = f"{s['new_gain_vs_full_ft']:.2f}" if s["new_gain_vs_full_ft"] is not None else "-"
    lines.append(f"| {name} | " + " | ".join(f"{h[c]['loss']:.3f} ({h[c]['ppl']:.0f})" for c in codes)
                 + f" | {s['orig_mean_loss']:.3f} | {s['new_mean_loss']:.3f} | {s['orig_vs_base']:.3f} | {gain} |")
  if routing_results:
    lines += ["", "share of held-out tokens whose top-k includes expert 0 (the frozen dense FFN), mean over MoE layers",
              "| arm | " + " | ".join(codes) + " | orig mean | new mean |", "|---" * (len(codes) + 3) + "|"]
    for name, r in routing_results.items():
      e0 = {c: mean(row[0] for row in r["top_k_share"][c]) for c in codes}
      lines.append(f"| {name} | " + " | ".join(f"{e0[c]:.3f}" for c in codes)
                   + f" | {mean(e0[c] for c in ORIGINAL):.3f} | {mean(e0[c] for c in NEW):.3f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--corpus", default="demo", choices=("demo", "ntrex"),
                      help=f"demo: the project's demo corpus; ntrex: NTREX-128 news lines from {NTREX}")
  parser.add_argument("--n_eval", type=int, default=200, help="ntrex: held-out tail lines per language (parallel)")
  parser.add_argument("--quick", action="store_true", help="a few steps per stage: checks the pipeline end to end")
  parser.add_argument("--base_steps", type=int, default=500, help="dense base on the original languages")
  parser.add_argument("--ft_steps", type=int, default=250, help="full_ft and moe_stage1 on the new languages (same)")
  parser.add_argument("--review_steps", type=int, default=40, help="MoE-LPR stage 2 (router only) on the replay")
  parser.add_argument("--review_docs", type=int, default=40, help="replay documents per language, original and new")
  parser.add_argument("--base_new_weight", type=float, default=0.0,
                      help="mixture weight of each new language in base (originals: 1.0); 0 = base never reads them")
  parser.add_argument("--num_experts", type=int, default=4)
  parser.add_argument("--top_k", type=int, default=2)
  parser.add_argument("--noise", type=float, default=0.0, help="upcycling noise on experts 1..N-1")
  parser.add_argument("--lr", type=float, default=3e-3, help="base learning rate")
  parser.add_argument("--ft_lr", type=float, default=1e-3, help="full_ft and moe_stage1 learning rate")
  parser.add_argument("--review_lr", type=float, default=1e-3, help="stage 2 (router) learning rate")
  parser.add_argument("--lpr_weight", type=float, default=0.1, help="γ of stage 2's LM + γ·LPR")
  parser.add_argument("--eval_every", type=int, default=100,
                      help="held-out evaluation period of every arm (OUT/<arm>/ metrics; 0: start and end only)")
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=3072, help="SentencePiece pieces over the seven languages")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.corpus == "ntrex" and not os.path.isdir(NTREX):
    sys.exit(f"--corpus ntrex: no NTREX-128 directory at {NTREX}")
  if args.quick:
    args.base_steps, args.ft_steps, args.review_steps = 40, 20, 6
  from polyglot_jax.models import moe_commands, upcycle
  t0 = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  info = prepare(args.out, ORIGINAL + NEW, args.review_docs, args.vocab, args.corpus, args.n_eval)
  print(f"data: train docs {info['train_docs']}, held-out docs {info['eval_docs']}, replay docs "
        f"{sum(info['replay_docs'].values())}", flush=True)
  path = lambda name: os.path.join(args.out, name)
  only_new = {c: 1.0 for c in NEW}
  runs = {}

  # Base: the original languages (and, with --base_new_weight, a little of the new ones).
  weights = {**{c: 1.0 for c in ORIGINAL}, **{c: args.base_new_weight for c in NEW}}
  runs["base"] = train(make_config(info, args, args.base_steps, args.lr, weights, info["train"]), path("base"), "base")
  # Full fine-tuning: every parameter, new languages only.
  runs["full_ft"] = train(make_config(info, args, args.ft_steps, args.ft_lr, only_new, info["train"],
                                      init_from=path("base")), path("full_ft"), "full_ft")
  # MoE stage 1: upcycle, then new experts + router on the new languages.
  if not os.path.exists(os.path.join(path("upcycled"), "config.json")):
    upcycle.upcycle(path("base"), path("upcycled"), args.num_experts, args.top_k, "all", noise=args.noise,
                    seed=args.seed)
  config = make_config(info, args, args.ft_steps, args.ft_lr, only_new, info["train"], init_from=path("upcycled"))
  config.objective = "moe_lpr"
  config.moe_lpr.stage = 1
  config.moe_lpr.original_languages = ORIGINAL
  runs["moe_stage1"] = train(config, path("moe_stage1"), "moe_stage1")
  # MoE-LPR stage 2: the router only, LM + γ·LPR on the replay of every language; no balance or z loss.
  config = make_config(info, args, args.review_steps, args.review_lr, {c: 1.0 for c in ORIGINAL + NEW},
                       info["replay"], init_from=path("moe_stage1"))
  config.objective = "moe_lpr"
  config.moe_lpr.stage = 2
  config.moe_lpr.original_languages = ORIGINAL
  config.moe_lpr.lpr_weight = args.lpr_weight
  config.optimizer.moe_balance_weight = 0.0
  config.optimizer.moe_z_loss = 0.0
  runs["moe_lpr"] = train(config, path("moe_lpr"), "moe_lpr")

  arms = {name: {"workdir": path(name), "held_out": held_out(run), "seconds": run["seconds"], "steps": run["steps"],
                 "curve": curve(path(name))} for name, run in runs.items()}
  for name, arm in arms.items():
    print(f"[{name}] held-out mean loss orig / new by step: "
          + ", ".join(f"{p['step']}: {p['orig']:.3f} / {p['new']:.3f}" for p in arm["curve"]), flush=True)
  # Upcycling keeps the function: stage 1 starts from base's held-out losses.
  gaps = [abs(arms["moe_stage1"]["held_out"][c]["loss_before"] - arms["base"]["held_out"][c]["loss"])
          for c in ORIGINAL + NEW if arms["moe_stage1"]["held_out"][c]["loss_before"] is not None]
  start_gap = max(gaps) if gaps else None  # None when moe_stage1 was resumed, not trained.
  if gaps:
    print(f"upcycled vs base held-out loss, largest gap over languages: {start_gap:.2e}", flush=True)

  routing_results = {}
  for name in ("moe_stage1", "moe_lpr"):
    t = time.perf_counter()
    moe_commands.main(["routing", "--model", path(name), "--data", info["eval"], "--out", path(f"routing_{name}")])
    with open(os.path.join(path(f"routing_{name}"), "routing.json"), encoding="utf-8") as f:
      routing_results[name] = json.load(f)
    print(f"[routing {name}] {time.perf_counter() - t:.0f} s", flush=True)

  summary = summarise(arms)
  table = format_tables(arms, summary, routing_results)
  minutes = (time.perf_counter() - t0) / 60
  print(table)
  print(f"total {minutes:.1f} min")
  with open(path("results.json"), "w", encoding="utf-8") as f:
    json.dump({"args": vars(args), "original": ORIGINAL, "new": NEW, "data": info, "minutes": minutes,
               "upcycled_vs_base_max_gap": start_gap, "arms": arms, "summary": summary, "table": table,
               "expert0_share": {n: {c: [row[0] for row in r["top_k_share"][c]] for c in r["languages"]}
                                 for n, r in routing_results.items()}}, f, indent=2, ensure_ascii=False)
  print(f"wrote {path('results.json')}")


if __name__ == "__main__":
  main()
