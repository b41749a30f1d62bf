"""MAPO on the synthetic math testbed: preference pairs from the SFT model's English reasoning, then DPO.

    python tools/experiments/mapo.py --qalign_out /tmp/qalign --out /tmp/mapo [--questions 60] [--steps 100]

Starts from the multilingual SFT model of `tools/experiments/qalign.py` (it answers in the
question's language). `polyglot-jax data mapo` samples `--num_samples` answers to `--questions`
training questions per non-English language, scores each against the model's greedy English
answer to the parallel question (translation likelihood under the same model), and keeps
(best-aligned correct, worst-aligned) pairs. DPO (sigmoid, β 0.1, frozen policy reference,
`rpo_alpha` 1) trains on them. Measured before and after on the held-out MGSM-format test set:
accuracy per language and agreement of each language's answers with the English answer.
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


def mgsm(workdir, test_dir, limit):
  import polyglot_jax
  from polyglot_jax.eval import harness
  loaded = polyglot_jax.load(workdir)
  options = harness.EvalOptions(limit=limit, batch_size=32, max_new_tokens=64, template="plain")
  return harness.evaluate_model(loaded.model, loaded.tokenizer, [("mgsm", test_dir)], options,
                                max_len=int(loaded.config.data.seq_len), progress=False)["mgsm"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--qalign_out", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--questions", type=int, default=60, help="training questions per non-English language")
  parser.add_argument("--num_samples", type=int, default=4)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--rpo_alpha", type=float, default=1.0)
  parser.add_argument("--n_test", type=int, default=50)
  args = parser.parse_args()
  from polyglot_jax import configs as config_lib
  from polyglot_jax import loading
  from polyglot_jax.data import mapo
  from polyglot_jax.train.trainer import train_and_evaluate
  from qalign import model_config
  t0 = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  data = os.path.join(args.qalign_out, "data")
  sft = os.path.join(args.qalign_out, "multilingual_sft")
  per_lang = {}
  subset = os.path.join(args.out, "questions.jsonl")
  with open(os.path.join(data, "parallel_questions.jsonl"), encoding="utf-8") as f, \
       open(subset, "w", encoding="utf-8") as out:
    for line in f:
      r = json.loads(line)
      if per_lang.get(r["lang"], 0) < args.questions:
        per_lang[r["lang"]] = per_lang.get(r["lang"], 0) + 1
        out.write(line)
  pairs = os.path.join(args.out, "mapo_pairs.jsonl")
  t = time.perf_counter()
  mapo.main(["--model", sft, "--input", subset, "--out", pairs, "--num_samples", str(args.num_samples),
             "--template", "plain", "--max_new_tokens", "64", "--batch_size", "64"])
  build_s = time.perf_counter() - t
  made = [json.loads(l) for l in open(pairs, encoding="utf-8")]
  test_dir = os.path.join(data, "test")
  before = mgsm(sft, test_dir, args.n_test)
  after, train_s = None, 0.0
  if made:
    config = config_lib.default_config()
    model_config(config, 0)
    config.objective = "dpo"
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
    after = mgsm(workdir, test_dir, args.n_test)
  langs = sorted(before["per_language"])
  print(f"pairs: {len(made)} from {sum(per_lang.values())} questions ({build_s:.0f} s to build)")
  print(f"{'':<8}" + "".join(f"{l:>7}" for l in langs) + f"{'agree':>8}")
  for name, r in (("before", before), ("after", after)):
    if r is None:
      continue
    print(f"{name:<8}" + "".join(f"{r['per_language'][l]['acc']:>7.3f}" for l in langs)
          + f"{r['consistency'].get('all_languages', 0):>8.3f}")
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"args": vars(args), "pairs": len(made), "pairs_per_lang": {l: sum(m["lang"] == l for m in made)
                                                                          for l in per_lang},
               "before": {k: before[k] for k in ("per_language", "consistency")},
               "after": after and {k: after[k] for k in ("per_language", "consistency")},
               "build_s": build_s, "train_s": train_s, "minutes": (time.perf_counter() - t0) / 60},
              f, indent=2, ensure_ascii=False)
  print(f"total {(time.perf_counter() - t0) / 60:.1f} min; wrote {args.out}/results.json")


if __name__ == "__main__":
  main()
