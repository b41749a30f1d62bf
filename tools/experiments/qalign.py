"""QAlign vs English-only response tuning on the synthetic multilingual math testbed (CPU, minutes).

    python tools/experiments/qalign.py --out /tmp/qalign [--steps 800] [--n_train 2000] [--seed 0]

Pipeline (every stage is `polyglot-jax train` with the `lm` or `sft` objective, chained with
config.init_from; the data is `polyglot-jax data synth-math`):

1. tokenizer: a SentencePiece model on the testbed's text (digits split);
2. base: LM on the questions of every language and the English chains of thought
   (the "pretrained" multilingual model: it reads every language, it reasons in English);
3. three arms from the base, each evaluated on held-out MGSM-format test questions
   in every language (greedy chain of thought, extracted final number):
   - english_sft: SFT on English question → English chain of thought (English-only
     response tuning);
   - qalign: stage I, SFT on X → English question translation, then stage II = the
     english_sft data;
   - multilingual_sft: SFT on question → chain of thought in every language (the
     translated-instructions reference).

Writes OUT/results.json and prints the table (accuracy per language, mean over non-English
languages, agreement of non-English answers with the English answer on the same item).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def model_config(config, vocab: int):
  m = config.model
  m.vocab_size = vocab
  m.d_model = 128
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 2
  m.mlp_dim = 512
  config.data.seq_len = 192
  config.data.global_batch_size = 16
  config.optimizer.weight_decay = 0.01
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 100000
  config.checkpoint.max_to_keep = 1
  config.checkpoint.async_save = False
  config.metrics.peak_flops_per_device = 1e11


def train(out, name, files, kind, objective, steps, lr, tokenizer, vocab, init_from=""):
  from polyglot_jax import configs as config_lib
  from polyglot_jax.train.trainer import train_and_evaluate
  workdir = os.path.join(out, name)
  if os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
    print(f"[{name}] already trained", flush=True)
    return workdir
  config = config_lib.default_config()
  model_config(config, vocab)
  config.objective = objective
  config.data.source = "jsonl"
  config.data.kind = kind
  config.data.template = "plain"
  config.data.train_files = tuple(files)
  config.data.eval_files = ()
  config.data.tokenizer = tokenizer
  config.optimizer.learning_rate = lr
  config.optimizer.warmup_steps = min(50, steps // 10)
  config.train.num_steps = steps
  config.init_from = init_from
  if init_from:
    from polyglot_jax import loading
    loading.apply_init_from(config)
  config_lib.validate(config)
  t = time.perf_counter()
  train_and_evaluate(config, workdir)
  print(f"[{name}] {steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
  return workdir


def evaluate(workdir, test_dir, limit, max_new_tokens):
  import polyglot_jax
  from polyglot_jax.eval import harness
  loaded = polyglot_jax.load(workdir)
  options = harness.EvalOptions(limit=limit, batch_size=32, max_new_tokens=max_new_tokens, template="plain")
  return harness.evaluate_model(loaded.model, loaded.tokenizer, [("mgsm", test_dir)], options,
                                max_len=int(loaded.config.data.seq_len), progress=False)["mgsm"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=800, help="steps of each SFT stage")
  parser.add_argument("--base_steps", type=int, default=800)
  parser.add_argument("--stage1_steps", type=int, default=400)
  parser.add_argument("--n_train", type=int, default=2000)
  parser.add_argument("--n_test", type=int, default=60)
  parser.add_argument("--languages", default="en,fr,de,ru,zh,hi")
  parser.add_argument("--difficulty", type=int, default=1)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  from polyglot_jax.data.synthetic_math import write_splits
  from polyglot_jax.tokenizer.train import train_sentencepiece
  t0 = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  data = os.path.join(args.out, "data")
  langs = args.languages.split(",")
  write_splits(data, n_train=args.n_train, n_test=args.n_test, languages=langs, seed=args.seed,
               difficulty=args.difficulty)
  read = lambda name: [json.loads(l) for l in open(os.path.join(data, name), encoding="utf-8")]
  stage1, stage2, multi = read("qalign_stage1.jsonl"), read("qalign_stage2.jsonl"), read("sft_multilingual.jsonl")

  # Base corpus: every language's questions, English reasoning.
  base_path = os.path.join(data, "base_text.jsonl")
  with open(base_path, "w", encoding="utf-8") as f:
    for r in multi:
      f.write(json.dumps({"text": r["instruction"], "lang": r["lang"]}, ensure_ascii=False) + "\n")
    for r in stage2:
      f.write(json.dumps({"text": f"{r['instruction']}\n{r['output']}", "lang": "en"}, ensure_ascii=False) + "\n")
  vocab = args.vocab
  tokenizer = os.path.join(args.out, "spm.model")
  if not os.path.exists(tokenizer):
    texts = [(r["instruction"], r["lang"]) for r in multi] + [(r["output"], r["lang"]) for r in multi] + \
            [(r["input"], r["lang"]) for r in stage1] + [(r["instruction"], "en") for r in stage1]
    train_sentencepiece(texts, os.path.join(args.out, "spm"), vocab_size=vocab, hard_vocab_limit=False)

  base = train(args.out, "base", [base_path], "text", "lm", args.base_steps, args.lr, tokenizer, vocab)
  arms = {
      "english_sft": train(args.out, "english_sft", [os.path.join(data, "qalign_stage2.jsonl")], "instruction",
                           "sft", args.steps, args.lr, tokenizer, vocab, init_from=base),
  }
  stage1_dir = train(args.out, "qalign_stage1", [os.path.join(data, "qalign_stage1.jsonl")], "instruction", "sft",
                     args.stage1_steps, args.lr, tokenizer, vocab, init_from=base)
  arms["qalign"] = train(args.out, "qalign", [os.path.join(data, "qalign_stage2.jsonl")], "instruction", "sft",
                         args.steps, args.lr, tokenizer, vocab, init_from=stage1_dir)
  arms["multilingual_sft"] = train(args.out, "multilingual_sft", [os.path.join(data, "sft_multilingual.jsonl")],
                                   "instruction", "sft", args.steps, args.lr, tokenizer, vocab, init_from=base)

  results = {}
  for name, workdir in [("base", base)] + list(arms.items()):
    t = time.perf_counter()
    r = evaluate(workdir, os.path.join(data, "test"), args.n_test, 64)
    acc = {lang: row["acc"] for lang, row in r["per_language"].items()}
    non_en = [v for lang, v in acc.items() if lang != "en"]
    results[name] = {"acc": acc, "non_english_mean": sum(non_en) / len(non_en),
                     "agreement_with_en": r["consistency"].get("per_language", {}),
                     "all_languages_agree": r["consistency"].get("all_languages"), "samples": r["samples"]}
    print(f"[eval {name}] {time.perf_counter() - t:.0f} s", flush=True)

  header = f"{'arm':<18}" + "".join(f"{l:>7}" for l in langs) + f"{'non-en':>8}{'agree':>7}"
  lines = [header]
  for name, r in results.items():
    lines.append(f"{name:<18}" + "".join(f"{r['acc'].get(l, float('nan')):>7.3f}" for l in langs)
                 + f"{r['non_english_mean']:>8.3f}{(r['all_languages_agree'] or 0):>7.3f}")
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"args": vars(args), "minutes": (time.perf_counter() - t0) / 60, "results": results, "table": table},
              f, indent=2, ensure_ascii=False)
  print(f"total {(time.perf_counter() - t0) / 60:.1f} min; wrote {args.out}/results.json")


if __name__ == "__main__":
  main()
