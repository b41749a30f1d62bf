"""Cross-lingual transfer probes of any checkpoint: ZS-CLT and CLKA (PreAlign's small-scale evaluations).

    polyglot-jax eval crosslingual --task zsclt|clka --model DIR --source en --targets fr,qen --workdir DIR
        [--clone_dir DIR] [--steps 200] [--lr 1e-3] [--seed 0] [--max_items 0] [--n_facts 60]
        [--n_choices 4] [--json OUT]

Both fine-tune a copy of the checkpoint on SOURCE-language data only (the
project trainer with ``config.init_from``; the checkpoint's model config and
tokenizer), then score multiple-choice queries in the source (the
in-language control) and every TARGET language, on the checkpoint
("before") and on the fine-tuned copy:

- ``run_zsclt`` (zero-shot cross-lingual transfer): SFT of ``"{name}:"`` →
  its CLDR category label (country, language, currency, month, weekday:
  one label set for every language) on the source names of the "seen"
  keys; the main number is the accuracy on the seen keys' names in each
  language, ``unseen`` the held-out keys.
- ``run_clka`` (cross-lingual knowledge application): LM fine-tuning on
  synthetic source sentences "<person> was born in <territory>."; each is
  queried in language T as the sentence in T cut before the territory, with
  ``n_choices`` territory names in T.

The items (CLDR names, facts, English-Clone text): ``crosslingual_items``.
Scoring: each choice is the sum of log p(choice tokens | BOS + prompt)
(``harness.Scorer`` over ``decode.generate.score``); the prediction is the
argmax, ``accuracy_norm`` the argmax of the sum per character of the
choice. English-Clone (``qen``): the target text of an item is
``clone_map.clone`` of its source text (ZS-CLT: the name; CLKA: the whole
query); the checkpoint's tokenizer must be the clone tokenizer.

Workdir: ``settings.json`` (a rerun with other settings is refused),
``train.jsonl``, ``queries.jsonl``, ``finetune/`` (the trainer's workdir;
an interrupted run resumes, a finished one is reused) and
``results.json``. See docs/crosslingual_eval.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Sequence

import numpy as np

from polyglot_jax.errors import ConfigError, DataError
# The items live in crosslingual_items; re-exported so callers need one module.
from polyglot_jax.eval.crosslingual_items import (  # noqa: F401
    BORN_IN, CLONE, FACT_REPEATS, HELD_OUT_SHARE, MIN_ITEMS, MIN_TERRITORIES, ZSCLT_LABELS, ZSCLT_SEPARATOR, Query,
    clka_items, cldr_names, person_names, resolve_languages, zsclt_items, zsclt_prompt)

TASKS = ("zsclt", "clka")
SEQ_LEN = 128  # Fine-tuning rows (capped by the checkpoint's own data.seq_len): the items are short.
GLOBAL_BATCH = 8  # Fine-tuning rows per step (rounded up to a multiple of the device count).
SCORE_BATCH = 32


# ---------------------------------------------------------------- scoring

def encode_choice(tokenizer, query: Query, choice: str) -> tuple[list[int], list[int]]:
  """(prompt ids, choice ids) as training tokenised them: the whole text cut after the prompt's tokens when
  ``query.sep`` joins them and the prompt's tokens start the whole's (else, and for sep None, apart)."""
  context = tokenizer.encode(query.prompt)
  if query.sep is not None:
    whole = tokenizer.encode(query.prompt + query.sep + choice)
    if whole[:len(context)] == context and len(whole) > len(context):
      return context, whole[len(context):]
  return context, tokenizer.encode(choice)


def score_queries(model, tokenizer, queries: Sequence[Query], *, max_len: int,
                  batch_size: int = SCORE_BATCH) -> tuple[list[np.ndarray], int]:
  """Summed log-probability of every choice of every query after BOS + prompt.

  Args:
    model: a Decoder (``polyglot_jax.load(path).model``).
    tokenizer: its SentencePieceProcessor.
    queries: the items.
    max_len: longest sequence (longer ones lose their earliest prompt tokens, counted).
    batch_size: sequences per scoring call.

  Returns:
    (per query a float64 array of its choices' sums, sequences truncated).
  """
  from polyglot_jax.eval import harness
  scorer = harness.Scorer(model, tokenizer, harness.EvalOptions(batch_size=batch_size), max_len)
  pairs = [encode_choice(tokenizer, q, c) for q in queries for c in q.choices]
  sums = np.asarray(scorer.logliks(pairs), np.float64)
  out, start = [], 0
  for q in queries:
    out.append(sums[start:start + len(q.choices)])
    start += len(q.choices)
  return out, scorer.truncated


def choice_metrics(queries: Sequence[Query], scores: Sequence[np.ndarray]) -> dict:
  """``accuracy`` (argmax of the sums), ``accuracy_norm`` (argmax per character of the choice), ``n``, ``chance``."""
  if not queries:
    return {"accuracy": None, "accuracy_norm": None, "n": 0, "chance": None}  # None: no items (JSON null).
  hits = [int(np.argmax(s)) == q.answer for q, s in zip(queries, scores)]
  norm = [int(np.argmax(s / np.array([len(c) for c in q.choices]))) == q.answer for q, s in zip(queries, scores)]
  return {"accuracy": float(np.mean(hits)), "accuracy_norm": float(np.mean(norm)), "n": len(queries),
          "chance": float(np.mean([1.0 / len(q.choices) for q in queries]))}


def _distinct(queries: list[Query], scores) -> dict:
  """``identical`` (share of items spelled as in the source) and ``accuracy_distinct`` (accuracy on the others)."""
  keep = [i for i, q in enumerate(queries) if not q.identical]
  rest = choice_metrics([queries[i] for i in keep], [scores[i] for i in keep])
  return {"identical": 1 - len(keep) / len(queries) if queries else None, "accuracy_distinct": rest["accuracy"]}


def _language_metrics(task: str, queries: list[Query], scores, truncated: int, unknown: float) -> dict:
  if task == "clka":
    return {**choice_metrics(queries, scores), **_distinct(queries, scores), "unknown": unknown,
            "truncated": truncated}
  seen = [i for i, q in enumerate(queries) if q.seen]
  unseen = [i for i, q in enumerate(queries) if not q.seen]
  main = choice_metrics([queries[i] for i in seen], [scores[i] for i in seen])
  rest = choice_metrics([queries[i] for i in unseen], [scores[i] for i in unseen])
  answers = [queries[i].answer for i in seen]
  majority = max(answers.count(a) for a in set(answers)) / len(answers) if answers else None
  return {"accuracy": main["accuracy"], "n": main["n"], "chance": main["chance"], "majority": majority,
          **_distinct([queries[i] for i in seen], [scores[i] for i in seen]),
          "unseen": {"accuracy": rest["accuracy"], "n": rest["n"]}, "unknown": unknown, "truncated": truncated}


def _unknown_share(tokenizer, texts: Sequence[str]) -> float:
  ids = [i for t in texts for i in tokenizer.encode(t)]
  return sum(bool(tokenizer.is_unknown(i) or tokenizer.is_byte(i)) for i in ids) / max(len(ids), 1)


def evaluate(model_dir: str, task: str, queries: dict[str, list[Query]], *,
             batch_size: int = SCORE_BATCH) -> dict[str, dict]:
  """Per-language metrics of the model at ``model_dir`` on ``queries`` (see ``run_zsclt`` / ``run_clka``)."""
  import polyglot_jax
  loaded = polyglot_jax.load(model_dir)
  if loaded.tokenizer is None:
    raise DataError(f"{model_dir} has no SentencePiece tokenizer to encode the queries with; use a model that ships one")
  out = {}
  for lang, items in queries.items():
    scores, truncated = score_queries(loaded.model, loaded.tokenizer, items, max_len=int(loaded.config.data.seq_len),
                                      batch_size=batch_size)
    unknown = _unknown_share(loaded.tokenizer, [q.prompt for q in items])
    out[lang] = _language_metrics(task, items, scores, truncated, round(unknown, 4))
  return out


# ---------------------------------------------------------------- fine-tuning

def finetune_config(model_dir: str, train_file: str, *, kind: str, objective: str, steps: int,
                    learning_rate: float, seed: int):
  """The trainer config that fine-tunes ``model_dir`` on ``train_file``: its model section and tokenizer kept.

  Returns:
    A locked, validated ConfigDict (``init_from`` = the checkpoint).
  """
  import jax

  from polyglot_jax import configs as config_lib
  from polyglot_jax import loading
  saved = loading.saved_config(model_dir)
  tokenizer = loading.find_tokenizer(model_dir, saved)
  if not tokenizer:
    raise DataError(f"{model_dir} ships no SentencePiece tokenizer (config.data.tokenizer, tokenizer/*.model); "
                    "use a checkpoint that has one")
  config = config_lib.default_config()
  config.lock()
  for key, value in saved.model.items():
    config_lib.set_key(config, f"model.{key}", value, from_string=False)
  devices = jax.device_count()
  values = {
      "objective": objective, "init_from": os.path.abspath(model_dir), "seed": seed,
      "data.source": "jsonl", "data.backend": "packed", "data.kind": kind, "data.template": "plain",
      "data.train_files": (os.path.abspath(train_file),), "data.eval_files": (),
      "data.tokenizer": os.path.abspath(tokenizer), "data.seq_len": min(SEQ_LEN, int(saved.data.seq_len)),
      "data.global_batch_size": -(-GLOBAL_BATCH // devices) * devices, "data.shuffle_seed": seed,
      # No weight decay: the probe measures what the source data teaches, not a shrunken base.
      "optimizer.learning_rate": float(learning_rate), "optimizer.warmup_steps": max(1, min(20, steps // 10)),
      "optimizer.weight_decay": 0.0, "train.num_steps": steps, "train.log_every_steps": max(1, steps // 10),
      "checkpoint.every_steps": steps, "checkpoint.max_to_keep": 1, "checkpoint.async_save": False,
      "metrics.peak_flops_per_device": float(saved.metrics.peak_flops_per_device),
  }
  for key, value in values.items():
    config_lib.set_key(config, key, value, from_string=False)
  loading.apply_init_from(config)
  config_lib.validate(config)
  return config


def _prepare_workdir(workdir: str, settings: dict) -> None:
  """Writes ``settings.json``; a workdir that holds another run's settings is an error naming the first difference."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "settings.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    for key in sorted(set(old) | set(settings)):
      if old.get(key) != settings.get(key):
        raise ConfigError(f"workdir '{workdir}' holds a run with {key}={old.get(key)!r}, not {settings.get(key)!r} "
                          "(settings.json); use a new --workdir or delete that one")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2, ensure_ascii=False)


def _write_jsonl(path: str, rows) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _run(task: str, model_dir: str, workdir: str, settings: dict, train: list[dict],
         queries: dict[str, list[Query]], *, kind: str, objective: str, extra: dict | None = None) -> dict:
  """Shared second half of both runs: check the tokenizer, fine-tune, score before and after, write results."""
  from polyglot_jax import loading
  from polyglot_jax.data import dictionaries
  from polyglot_jax.interop import workdir as workdir_lib
  t0 = time.perf_counter()
  tokenizer_path = loading.find_tokenizer(model_dir, loading.saved_config(model_dir))
  if tokenizer_path and CLONE in queries:
    share = _unknown_share(dictionaries.load_processor(tokenizer_path), [q.prompt for q in queries[CLONE][:50]])
    if share > 0.5:
      raise DataError(f"the tokenizer of {model_dir} ('{tokenizer_path}') spells English-Clone text with "
                      f"{share:.0%} unknown or byte pieces; target qen needs a checkpoint trained with the clone "
                      "tokenizer (CLONE_DIR/clone.model)")
  workdir = os.path.abspath(workdir)
  _prepare_workdir(workdir, settings)
  train_file = os.path.join(workdir, "train.jsonl")
  _write_jsonl(train_file, train)
  _write_jsonl(os.path.join(workdir, "queries.jsonl"), (dataclasses.asdict(q) for items in queries.values()
                                                        for q in items))
  steps = settings["steps"]
  print(f"[{task}] {len(train)} {settings['source']} training records → {train_file}; queries: "
        + ", ".join(f"{lang} {len(items)}" for lang, items in queries.items()), flush=True)
  before = evaluate(model_dir, task, queries)
  print(f"[{task}] scored the checkpoint in {time.perf_counter() - t0:.0f} s", flush=True)
  finetuned = os.path.join(workdir, "finetune")
  if steps in workdir_lib.checkpoint_steps(finetuned):
    print(f"[{task}] reusing the fine-tuned checkpoint {finetuned}/checkpoints/{steps}", flush=True)
  else:
    from polyglot_jax.train.trainer import train_and_evaluate
    config = finetune_config(model_dir, train_file, kind=kind, objective=objective, steps=steps,
                             learning_rate=settings["learning_rate"], seed=settings["seed"])
    print(f"[{task}] fine-tuning {model_dir} for {steps} steps ({objective}, lr {settings['learning_rate']:g}) "
          f"→ {finetuned}", flush=True)
    train_and_evaluate(config, finetuned)
  after = evaluate(finetuned, task, queries)
  results = {"task": task, "source": settings["source"], "targets": settings["targets"], "steps": steps,
             "model": os.path.abspath(model_dir), "finetuned": finetuned, "settings": settings,
             "languages": after, "before": before, **(extra or {}), "seconds": round(time.perf_counter() - t0, 1)}
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, ensure_ascii=False)
  return results


def _clone_map(clone_dir: str):
  if not clone_dir:
    return None
  from polyglot_jax.data import clone
  return clone.load_clone_map(clone_dir)


# ---------------------------------------------------------------- the two probes

def run_zsclt(model_dir: str, source: str, targets: Sequence[str], workdir: str, *, steps: int = 200,
              learning_rate: float = 1e-3, clone_dir: str = "", seed: int = 0, max_items: int = 0) -> dict:
  """Zero-shot cross-lingual transfer: SFT "name → category" in the source, query it in every target.

  Args:
    model_dir: the checkpoint (any ``polyglot_jax.load`` path with a tokenizer).
    source: training language.
    targets: query languages (``qen``: English-Clone, needs ``clone_dir``).
    workdir: where the data, the fine-tuned copy and results.json go.
    steps: fine-tuning steps (objective sft, record kind instruction).
    learning_rate: peak learning rate (cosine schedule, short warmup).
    clone_dir: the folder `polyglot-jax data clone` wrote (for qen).
    seed: key order, held-out split, data order.
    max_items: CLDR keys in all, round-robin over the categories (0: every key).

  Returns:
    {"task", "source", "targets", "steps", "model", "finetuned", "settings", "seconds",
     "languages": {lang: {"accuracy" (seen keys), "n", "chance", "majority", "identical", "accuracy_distinct",
                          "unseen": {"accuracy", "n"}, "unknown", "truncated"}},
     "before": the same for the checkpoint, "skipped": {lang: {reason: keys}}}; the source comes first.
  """
  clone_map = _clone_map(clone_dir)
  train, queries, skipped = zsclt_items(source, targets, clone_map=clone_map, seed=seed, max_items=max_items)
  source, languages = resolve_languages(source, targets, clone_map)
  settings = {"task": "zsclt", "model": os.path.abspath(model_dir), "source": source, "targets": languages[1:],
              "steps": steps, "learning_rate": learning_rate, "seed": seed, "max_items": max_items,
              "clone_dir": os.path.abspath(clone_dir) if clone_dir else ""}
  return _run("zsclt", model_dir, workdir, settings, train, queries, kind="instruction", objective="sft",
              extra={"skipped": skipped})


def run_clka(model_dir: str, source: str, targets: Sequence[str], workdir: str, *, steps: int = 200,
             learning_rate: float = 1e-3, n_facts: int = 60, n_choices: int = 4, clone_dir: str = "",
             seed: int = 0) -> dict:
  """Cross-lingual knowledge application: teach "<person> was born in <territory>." in the source, query in targets.

  Args:
    model_dir: the checkpoint (any ``polyglot_jax.load`` path with a tokenizer).
    source: training language (needs a ``BORN_IN`` sentence).
    targets: query languages (each with a ``BORN_IN`` sentence, or ``qen`` with ``clone_dir``).
    workdir: where the data, the fine-tuned copy and results.json go.
    steps: fine-tuning steps (objective lm on the fact sentences).
    learning_rate: peak learning rate.
    n_facts: facts taught (each written ``FACT_REPEATS`` times).
    n_choices: territories per query.
    clone_dir: the folder `polyglot-jax data clone` wrote (for qen).
    seed: names, territories, distractors, data order.

  Returns:
    {"task", "source", "targets", "steps", "model", "finetuned", "settings", "seconds",
     "languages": {lang: {"accuracy", "accuracy_norm", "n", "chance", "identical", "accuracy_distinct", "unknown",
                          "truncated"}},
     "before": the same for the checkpoint}; the source comes first.
  """
  clone_map = _clone_map(clone_dir)
  train, queries = clka_items(source, targets, n_facts=n_facts, n_choices=n_choices, clone_map=clone_map, seed=seed)
  source, languages = resolve_languages(source, targets, clone_map)
  settings = {"task": "clka", "model": os.path.abspath(model_dir), "source": source, "targets": languages[1:],
              "steps": steps, "learning_rate": learning_rate, "seed": seed, "n_facts": n_facts,
              "n_choices": n_choices, "clone_dir": os.path.abspath(clone_dir) if clone_dir else ""}
  return _run("clka", model_dir, workdir, settings, train, queries, kind="text", objective="lm")


# ---------------------------------------------------------------- table and CLI

def _cell(value, width: int, spec: str = ".3f") -> str:
  """A number right-aligned in ``width``; "-" for None (no items)."""
  return f"{'-' if value is None else format(value, spec):>{width}}"


def table(results: dict) -> str:
  """A row per language: n, chance, accuracy before → after (ZS-CLT: and unseen keys; CLKA: and per character),
  share of unknown pieces, share of items spelled as in the source and the accuracy after on the others."""
  task, after, before = results["task"], results["languages"], results["before"]
  lines = [f"{task}: fine-tuned on {results['source']} for {results['steps']} steps; "
           f"{'seen keys (unseen keys: held out)' if task == 'zsclt' else 'taught facts'}"]
  if task == "zsclt":
    lines.append(f"{'lang':<6}{'n':>6}{'chance':>8}{'major':>7}{'before':>8}{'after':>8}"
                 f"{'unseen n':>10}{'before':>8}{'after':>8}{'unk':>7}{'ident':>7}{'distinct':>9}")
    for lang, row in after.items():
      b = before[lang]
      lines.append(f"{lang:<6}{row['n']:>6}" + _cell(row["chance"], 8) + _cell(row["majority"], 7)
                   + _cell(b["accuracy"], 8) + _cell(row["accuracy"], 8) + f"{row['unseen']['n']:>10}"
                   + _cell(b["unseen"]["accuracy"], 8) + _cell(row["unseen"]["accuracy"], 8)
                   + _cell(row["unknown"], 7, ".1%") + _cell(row["identical"], 7, ".1%")
                   + _cell(row["accuracy_distinct"], 9))
  else:
    lines.append(f"{'lang':<6}{'n':>6}{'chance':>8}{'before':>8}{'after':>8}{'norm b':>8}{'norm a':>8}{'unk':>7}"
                 f"{'ident':>7}{'distinct':>9}")
    for lang, row in after.items():
      b = before[lang]
      lines.append(f"{lang:<6}{row['n']:>6}" + _cell(row["chance"], 8) + _cell(b["accuracy"], 8)
                   + _cell(row["accuracy"], 8) + _cell(b["accuracy_norm"], 8) + _cell(row["accuracy_norm"], 8)
                   + _cell(row["unknown"], 7, ".1%") + _cell(row["identical"], 7, ".1%")
                   + _cell(row["accuracy_distinct"], 9))
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """``polyglot-jax eval crosslingual``: runs one probe, prints its table, writes results.json (and --json)."""
  parser = argparse.ArgumentParser(prog="polyglot-jax eval crosslingual")
  parser.add_argument("--task", required=True, choices=TASKS)
  parser.add_argument("--model", required=True, help="the checkpoint: training, converted or Hugging Face dir")
  parser.add_argument("--source", required=True, help="training language, e.g. en")
  parser.add_argument("--targets", required=True, help="comma-separated query languages, e.g. fr,qen")
  parser.add_argument("--workdir", required=True, help="data, fine-tuned copy and results.json go here")
  parser.add_argument("--clone_dir", default="", help="`polyglot-jax data clone` output (for the qen target)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_items", type=int, default=0, help="zsclt: CLDR keys in all (0: every key)")
  parser.add_argument("--n_facts", type=int, default=60, help="clka: facts taught")
  parser.add_argument("--n_choices", type=int, default=4, help="clka: territories per query")
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args(argv)
  targets = [t for t in args.targets.split(",") if t.strip()]
  common = dict(steps=args.steps, learning_rate=args.lr, clone_dir=args.clone_dir, seed=args.seed)
  if args.task == "zsclt":
    results = run_zsclt(args.model, args.source, targets, args.workdir, max_items=args.max_items, **common)
  else:
    results = run_clka(args.model, args.source, targets, args.workdir, n_facts=args.n_facts,
                       n_choices=args.n_choices, **common)
  print(table(results), flush=True)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, ensure_ascii=False)
  print(f"wrote {os.path.join(os.path.abspath(args.workdir), 'results.json')}"
        + (f" and {args.json}" if args.json else ""), flush=True)
  return 0
