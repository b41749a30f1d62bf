"""Joint multilingual pretraining vs PreAlign under the same compute (CPU, minutes).

    python tools/experiments/prealign.py --out /tmp/prealign [--corpus ntrex|demo] [--settings clone,fra]

Settings (each a high-resource English corpus and a smaller corpus in a second language,
different lines of text, so nothing in the LM data is parallel):
- ``clone``: English-Clone (``qen``, data/clone.py), a synthetic language with an exact
  token-level translation of English; the dictionary is every corpus word with its clone.
- ``fra``: French, a real pair; the dictionary is CLDR's names (territories, languages,
  months, weekdays, currencies, scripts) from babel.

Arms, each ``--steps`` optimizer steps of the same batch shape in total:
- ``joint``: LM from random init on both languages;
- ``prealign``: ``--align_steps`` of the ``prealign`` objective (contrastive word alignment
  over layers + LM on the dictionary words) from random init, then LM with input-only
  code-switching (``data.code_switch.rate``) for the remaining steps, init_from stage 1.

Ablations (``--arms joint,prealign,no_align,no_switch``): ``no_align`` runs stage 1 with
α = 0 (LM on the dictionary words only), ``no_switch`` stage 2 without code-switching.

Evaluation of each arm: held-out perplexity per language (parallel held-out lines);
ZS-CLT and CLKA (polyglot_jax/eval/crosslingual.py) from English to the second language.
Text: NTREX-128 (news, ``../shared/corpora/ntrex128``) when present, else the project's
demo corpus (``--corpus demo``). Writes OUT/results_<arms>.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
NTREX = os.path.join(os.path.dirname(REPO), "shared", "corpora", "ntrex128")


def read_lines(corpus: str, lang: str, workdir: str) -> list[str]:
  """Lines of one language: NTREX-128's file, or the demo corpus's documents."""
  if corpus == "ntrex":
    name = {"eng": "eng-US", "fra": "fra"}[lang]
    with open(os.path.join(NTREX, f"newstest2019-ref.{name}.txt"), encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  from polyglot_jax.data.demo_corpus import build_demo_corpus
  demo = os.path.join(workdir, "demo_corpus")
  if not os.path.exists(os.path.join(demo, "train.jsonl")):
    build_demo_corpus(demo)
  out = []
  for name in ("train.jsonl", "eval.jsonl"):
    out += [r["text"] for r in map(json.loads, open(os.path.join(demo, name))) if r["lang"] == lang]
  return out


def write_jsonl(path: str, records) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return path


def prepare(setting: str, corpus: str, out: str, n_high: int, n_low: int, n_eval: int, vocab: int) -> dict:
  """Tokenizer, LM train/held-out files and the dictionary of one setting."""
  from polyglot_jax.tokenizer.train import train_sentencepiece
  root = os.path.join(out, setting, "data")
  os.makedirs(root, exist_ok=True)
  english = read_lines(corpus, "eng", root)
  done = os.path.join(root, "prepared.json")
  if os.path.exists(done):
    return json.load(open(done))
  if setting == "clone":
    from polyglot_jax.data import clone
    eng_train, low_src, held = english[:n_high], english[n_high:n_high + n_low], english[-n_eval:]
    base = train_sentencepiece([(t, "eng") for t in english[:-n_eval]], os.path.join(root, "eng"), vocab,
                               character_coverage=1.0)
    manifest = clone.write_clone(base, [{"text": t, "lang": "eng"} for t in low_src], root, min_count=2)
    cmap = clone.load_clone_map(root)
    other = "qen"
    train = [{"text": t, "lang": "eng"} for t in eng_train] + [json.loads(line) for line in open(
        os.path.join(root, "clone.jsonl"))]
    held_out = [{"text": t, "lang": "eng"} for t in held] + [{"text": cmap.clone(t), "lang": other} for t in held]
    info = {"tokenizer": manifest["tokenizer"], "vocab": manifest["vocab_size"], "dictionary":
            os.path.join(root, "dictionary.jsonl"), "other": other, "clone_dir": root,
            "dictionary_size": manifest["dictionary_words"]}
  else:
    from polyglot_jax.data import dictionaries
    french = read_lines(corpus, setting, root)
    n_eval_pair = min(n_eval, len(english) // 10)
    held = list(zip(english[-n_eval_pair:], french[-n_eval_pair:])) if corpus == "ntrex" else []
    eng_train = english[:n_high]
    fra_train = french[n_high:n_high + n_low] if corpus == "ntrex" else french[:n_low]
    if not held:  # The demo corpus: keep its last documents out instead.
      held = [(e, f) for e, f in zip(english[-n_eval:], french[-n_eval:])]
      eng_train, fra_train = english[:-n_eval][:n_high], french[:-n_eval][:n_low]
    spm = train_sentencepiece([(t, "eng") for t in eng_train] + [(t, setting) for t in fra_train],
                              os.path.join(root, "pair"), vocab, character_coverage=1.0)
    groups, report = dictionaries.from_cldr(["eng", setting])
    path = os.path.join(root, "dictionary.jsonl")
    dictionaries.write_jsonl(groups, path)
    train = [{"text": t, "lang": "eng"} for t in eng_train] + [{"text": t, "lang": setting} for t in fra_train]
    held_out = [{"text": e, "lang": "eng"} for e, _ in held] + [{"text": f, "lang": setting} for _, f in held]
    info = {"tokenizer": spm, "vocab": vocab, "dictionary": path, "other": setting, "clone_dir": "",
            "dictionary_size": len(groups)}
  info["train"] = write_jsonl(os.path.join(root, "train.jsonl"), train)
  info["eval"] = write_jsonl(os.path.join(root, "eval.jsonl"), held_out)
  info["train_lines"] = {"eng": sum(r["lang"] == "eng" for r in train), info["other"]: sum(
      r["lang"] == info["other"] for r in train)}
  json.dump(info, open(done, "w"), indent=2)
  return info


def base_config(info: dict, args):
  from polyglot_jax import configs as config_lib
  config = config_lib.default_config()
  m = config.model
  m.vocab_size = (info["vocab"] + 127) // 128 * 128
  m.d_model, m.num_layers, m.num_heads, m.num_kv_heads, m.mlp_dim = 128, 4, 4, 2, 512
  m.tie_embeddings = True
  config.data.source = "jsonl"
  config.data.tokenizer = info["tokenizer"]
  config.data.seq_len = 128
  config.data.global_batch_size = 16
  config.data.languages = ("eng", info["other"])
  config.data.eval_max_rows = 64
  config.optimizer.learning_rate = args.lr
  config.optimizer.weight_decay = 0.01
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 100000
  config.checkpoint.max_to_keep = 1
  config.checkpoint.async_save = False
  config.metrics.peak_flops_per_device = 1e11
  config.seed = args.seed
  return config


def train(config, workdir: str, name: str) -> dict:
  from polyglot_jax import configs as config_lib
  from polyglot_jax.train.trainer import train_and_evaluate
  config_lib.validate(config)
  t = time.perf_counter()
  summary = train_and_evaluate(config, workdir)
  print(f"[{name}] {config.train.num_steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
  return summary


def lm_config(info: dict, args, steps: int, init_from: str = "", code_switch: float = 0.0):
  config = base_config(info, args)
  config.objective = "lm"
  config.data.kind = "text"
  config.data.train_files = (info["train"],)
  config.data.eval_files = (info["eval"],)
  config.data.mixture.method = "proportional"
  config.train.num_steps = steps
  config.optimizer.warmup_steps = min(50, steps // 10)
  config.init_from = init_from
  config.data.code_switch.rate = code_switch
  config.data.code_switch.dictionary = info["dictionary"] if code_switch else ""
  return config


def held_out_ppl(summary: dict, languages) -> dict:
  metrics = summary.get("eval_metrics_after", {})
  return {lang: metrics.get(f"ppl/{lang}") for lang in languages}


def run_setting(setting: str, args) -> dict:
  if args.tasks:
    from polyglot_jax.eval import crosslingual
  info = prepare(setting, args.corpus, args.out, args.n_high, args.n_low, args.n_eval, args.vocab)
  other = info["other"]
  print(f"== {setting}: train lines {info['train_lines']}, dictionary {info['dictionary_size']} entries", flush=True)
  root = os.path.join(args.out, setting)
  arms = {}
  # Joint: LM on both languages for the whole budget.
  if "joint" in args.arms:
    joint_dir = os.path.join(root, "joint")
    summary = train(lm_config(info, args, args.steps), joint_dir, f"{setting}/joint")
    arms["joint"] = {"workdir": joint_dir, "ppl": held_out_ppl(summary, ("eng", other))}
  # PreAlign: alignment initialisation, then LM with input-only code-switching; the ablations
  # drop one part (no_align: stage 1 is LM on the dictionary words only; no_switch: no code-switching).
  variants = {"prealign": (args.alpha, args.code_switch), "no_align": (0.0, args.code_switch),
              "no_switch": (args.alpha, 0.0)}
  for name in [a for a in args.arms if a != "joint"]:
    alpha, switch = variants[name]
    stage1 = base_config(info, args)
    stage1.objective = "prealign"
    stage1.data.kind = "word_groups"
    stage1.data.train_files = (info["dictionary"],)
    stage1.data.eval_files = ()
    stage1.data.mixture.method = "proportional"
    stage1.prealign.alpha = alpha
    stage1.train.num_steps = args.align_steps
    stage1.optimizer.warmup_steps = min(20, args.align_steps // 5)
    s1_dir = os.path.join(root, f"{name}_stage1" if name != "prealign" else "prealign_stage1")
    s1 = train(stage1, s1_dir, f"{setting}/{name} stage 1")
    s2_dir = os.path.join(root, name)
    from polyglot_jax import loading
    config = lm_config(info, args, args.steps - args.align_steps, init_from=s1_dir, code_switch=switch)
    loading.apply_init_from(config)
    summary = train(config, s2_dir, f"{setting}/{name} stage 2")
    arms[name] = {"workdir": s2_dir, "ppl": held_out_ppl(summary, ("eng", other)), "alpha": alpha,
                  "code_switch": switch}
  for name, arm in arms.items():
    for task in args.tasks:
      fn = {"zsclt": crosslingual.run_zsclt, "clka": crosslingual.run_clka}[task]
      t = time.perf_counter()
      result = fn(arm["workdir"], "eng", [other], os.path.join(root, f"{name}_{task}"), steps=args.eval_steps,
                  clone_dir=info["clone_dir"], seed=args.seed)
      arm[task] = result
      print(f"[{setting}/{name}] {task} in {time.perf_counter() - t:.0f} s: "
            + ", ".join(f"{lang} {v['accuracy']:.3f}" for lang, v in result["languages"].items()), flush=True)
  return {"info": info, "arms": arms}


def format_table(results: dict) -> str:
  lines = ["| setting | arm | ppl eng | ppl other | ZS-CLT eng | ZS-CLT other | CLKA eng | CLKA other |",
           "|---|---|---|---|---|---|---|---|"]
  for setting, res in results.items():
    other = res["info"]["other"]
    for name, arm in res["arms"].items():
      def acc(task, lang):
        v = arm.get(task, {}).get("languages", {}).get(lang)
        return f"{v['accuracy']:.3f}" if v else "-"
      ppl = arm["ppl"]
      lines.append(f"| {setting} ({other}) | {name} | {ppl['eng'] or float('nan'):.1f} | "
                   f"{ppl[other] or float('nan'):.1f} | {acc('zsclt', 'eng')} | {acc('zsclt', other)} | "
                   f"{acc('clka', 'eng')} | {acc('clka', other)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--corpus", default="ntrex" if os.path.isdir(NTREX) else "demo", choices=("ntrex", "demo"))
  parser.add_argument("--settings", default="clone,fra")
  parser.add_argument("--steps", type=int, default=800, help="optimizer steps of each arm in total")
  parser.add_argument("--align_steps", type=int, default=100, help="PreAlign stage 1 steps (within --steps)")
  parser.add_argument("--alpha", type=float, default=0.1, help="config.prealign.alpha")
  parser.add_argument("--code_switch", type=float, default=0.05, help="data.code_switch.rate of stage 2")
  parser.add_argument("--eval_steps", type=int, default=150, help="fine-tuning steps of ZS-CLT and CLKA")
  parser.add_argument("--n_high", type=int, default=1400, help="English training lines")
  parser.add_argument("--n_low", type=int, default=300, help="training lines of the second language")
  parser.add_argument("--n_eval", type=int, default=200, help="held-out lines per language (parallel)")
  parser.add_argument("--vocab", type=int, default=1024, help="SentencePiece pieces (the clone about doubles it)")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--tasks", default="zsclt,clka", help="cross-lingual evaluations to run (empty: none)")
  parser.add_argument("--arms", default="joint,prealign",
                      help="joint, prealign, and the ablations no_align (stage 1 without the alignment loss) and "
                           "no_switch (stage 2 without code-switching)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  results = {}
  for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
    results[setting] = run_setting(setting, args)
  table = format_table(results)
  print(table)
  minutes = (time.perf_counter() - t0) / 60
  print(f"total {minutes:.1f} min")
  with open(os.path.join(args.out, f"results_{'_'.join(args.arms)}.json"), "w") as f:
    json.dump({"args": vars(args), "minutes": minutes, "results": results, "table": table}, f, indent=2,
              default=str)


if __name__ == "__main__":
  main()
