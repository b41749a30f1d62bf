"""SFT then DPO with a synthetic preference: answers in the prompt's language over English answers.

    python tools/experiments/dpo_language.py --qalign_out /tmp/qalign --out /tmp/dpo_language [--steps 150]

Starts from the English-only SFT model that `tools/experiments/qalign.py` trains (it answers every
question with an English chain of thought) and its testbed data. Preference records come from
parallel_questions.jsonl: for each non-English question, chosen = the chain of thought in the
question's language, rejected = the English one (same numbers). DPO (sigmoid, β = 0.1, frozen
policy reference) trains on them. Measured before and after on held-out test questions of every
non-English language, greedy: the share of answers written in the question's language (script
for ru/zh/hi, langid among the testbed's languages otherwise) and accuracy of the final number;
and rewards/accuracies over training from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools", "experiments"))

SCRIPTS = {"ru": ("\u0400", "\u04ff"), "zh": ("\u4e00", "\u9fff"), "hi": ("\u0900", "\u097f")}


def language_of(text: str, candidates) -> str:
  """The testbed language a generated answer is written in (script first, then langid)."""
  letters = [c for c in text if c.isalpha()]
  for lang, (lo, hi) in SCRIPTS.items():
    if letters and sum(lo <= c <= hi for c in letters) / len(letters) > 0.3:
      return lang
  import langid
  latin = sorted({c for c in candidates if c not in SCRIPTS} | {"en"})
  langid.set_languages(latin)
  return langid.classify(text)[0]


def measure(workdir, items, langs):
  import polyglot_jax
  from polyglot_jax.decode.generate import generate
  from polyglot_jax.eval.answers import extract_number
  loaded = polyglot_jax.load(workdir)
  tok = loaded.tokenizer
  prompts = [[tok.bos_id()] + tok.encode(f"{x['question']}\n") for x in items]
  outs = []
  for start in range(0, len(prompts), 32):
    new = generate(loaded.model, prompts[start:start + 32], 64, stop_ids=(tok.eos_id(),))
    outs += [tok.decode([i for i in ids if i != tok.eos_id()]) for ids in new]
  per_lang = {}
  for lang in langs:
    rows = [(x, o) for x, o in zip(items, outs) if x["lang"] == lang]
    native = sum(language_of(o, langs) == lang for _, o in rows) / len(rows)
    right = sum((lambda v: v is not None and abs(v - x["answer"]) < 1e-6)(extract_number(o)) for x, o in rows)
    per_lang[lang] = {"native_share": native, "acc": right / len(rows), "n": len(rows),
                      "sample": rows[0][1][:160]}
  return per_lang


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--qalign_out", required=True, help="the --out folder of tools/experiments/qalign.py")
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--lr", type=float, default=5e-4)
  parser.add_argument("--beta", type=float, default=0.1)
  parser.add_argument("--rpo_alpha", type=float, default=0.0, help="NLL on the chosen response (RPO)")
  parser.add_argument("--n_test", type=int, default=30)
  args = parser.parse_args()
  from polyglot_jax import configs as config_lib
  from polyglot_jax import loading
  from polyglot_jax.train.trainer import train_and_evaluate
  from qalign import model_config
  t0 = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  data = os.path.join(args.qalign_out, "data")
  sft = os.path.join(args.qalign_out, "english_sft")
  pairs = os.path.join(args.out, "preferences.jsonl")
  with open(os.path.join(data, "parallel_questions.jsonl"), encoding="utf-8") as f, \
       open(pairs, "w", encoding="utf-8") as out:
    for line in f:
      r = json.loads(line)
      out.write(json.dumps({"prompt": f"{r['question']}\n", "chosen": r["cot"], "rejected": r["en_cot"],
                            "lang": r["lang"]}, ensure_ascii=False) + "\n")
  tests = [json.loads(l) for l in open(os.path.join(data, "test", "problems.jsonl"), encoding="utf-8")]
  langs = sorted({x["lang"] for x in tests} - {"en"})
  items = [x for x in tests if x["lang"] != "en"]
  items = [x for lang in langs for x in [y for y in items if y["lang"] == lang][:args.n_test]]

  before = measure(sft, items, langs)
  config = config_lib.default_config()
  model_config(config, 0)
  config.objective = "dpo"
  config.dpo.beta = args.beta
  config.dpo.reference = "policy"
  config.dpo.rpo_alpha = args.rpo_alpha
  config.data.source = "jsonl"
  config.data.kind = "preference"
  config.data.global_batch_size = 8
  config.data.train_files = (pairs,)
  config.data.eval_files = ()
  config.optimizer.learning_rate = args.lr
  config.optimizer.warmup_steps = 10
  config.train.num_steps = args.steps
  config.train.log_every_steps = 10
  config.init_from = sft
  loading.apply_init_from(config)
  config_lib.validate(config)
  workdir = os.path.join(args.out, "dpo")
  t = time.perf_counter()
  train_and_evaluate(config, workdir)
  train_s = time.perf_counter() - t
  after = measure(workdir, items, langs)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  curve = [(r["step"], r.get("rewards/accuracies"), r.get("rewards/margins"), r.get("loss")) for r in rows
           if "rewards/accuracies" in r]
  print(f"{'lang':<6}{'native before':>14}{'native after':>13}{'acc before':>11}{'acc after':>10}")
  for lang in langs:
    print(f"{lang:<6}{before[lang]['native_share']:>14.3f}{after[lang]['native_share']:>13.3f}"
          f"{before[lang]['acc']:>11.3f}{after[lang]['acc']:>10.3f}")
  print("step  rewards/accuracies  rewards/margins  loss")
  for step, acc, margin, loss in curve:
    print(f"{step:>4}  {acc:>18.3f}  {margin:>15.3f}  {loss:.4f}")
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"args": vars(args), "before": before, "after": after, "curve": curve, "train_s": train_s,
               "minutes": (time.perf_counter() - t0) / 60}, f, indent=2, ensure_ascii=False)
  print(f"total {(time.perf_counter() - t0) / 60:.1f} min; wrote {args.out}/results.json")


if __name__ == "__main__":
  main()
