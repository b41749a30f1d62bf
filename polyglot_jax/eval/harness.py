"""The evaluation harness behind ``polyglot-jax eval`` and in-training evaluation.

A task is a name from ``formats.TASK_FORMATS`` and a path (file or directory
in the public layout). Each task is scored per language:

- ``perplexity``: held-out text; every document is ``BOS + text + EOS``,
  cut into windows of at most ``max_len`` tokens (no overlap). Reports
  ``ppl`` = exp(mean token NLL), ``nll`` and ``bits_per_byte`` (NLL in bits
  over the UTF-8 bytes of the text: comparable across tokenizers and languages).
- multiple choice (``formats.MULTIPLE_CHOICE``): each choice is scored as the
  log-likelihood of ``" " + choice`` after ``BOS + [k shots] + context``.
  ``acc`` picks the highest sum; ``acc_norm`` the highest sum per character
  of the choice. Shots are the first ``shots`` other items of the same
  language, each written ``context + " " + right choice`` and separated by a
  blank line.
- ``mgsm``: chain-of-thought generation after ``Question: q\\nStep-by-Step
  Answer:`` (shots from an exemplar file, same layout); the prediction is
  ``answers.extract_number`` of the completion; ``acc`` = prediction equals the answer.
- ``flores``: translation from the pivot language (``eng_Latn`` / ``en`` when
  present, else the first) into every other one, greedy, one line. The
  prompt is ``<Source name>: src\\n<Target name>:`` after ``shots`` example
  pairs taken from the first lines (which are then not scored). ``chrf++``
  is sacrebleu's chrF++ (word order 2); ``spbleu`` is reported only when a
  SentencePiece model for it is present locally (``spbleu_model``, or the
  file sacrebleu keeps for its flores200 tokenizer); the result says which.

Parallel tasks (items with the same id in every language: XCOPA, XNLI,
XStoryCloze, Belebele, MGSM) also report ``consistency``: per language, the
share of items whose prediction equals the pivot language's (English when
present) on the same item, and over all languages, the share of items
predicted the same in every language. A missing prediction (MGSM output
without a number) agrees with nothing.

Rules for awkward input, counted in each task's result:
- a language whose text is mostly unknown pieces for the tokenizer (share of
  ``unk`` or byte-fallback pieces above ``max_unknown``) is reported under
  ``unencodable`` with that share, not scored;
- a sequence longer than ``max_len`` keeps BOS and its last ``max_len - 1``
  tokens (the earliest context goes first: shots, then the item's start),
  and is counted under ``truncated``. Generation prompts keep room for
  ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from polyglot_jax.errors import ConfigError, DataError
from polyglot_jax.eval import answers, formats

# The number each task is summarised by (the printed table and the plots); lower is better for ppl.
MAIN_METRIC = {"perplexity": "ppl", "mgsm": "acc", "flores": "chrf++"}
MAIN_METRIC.update({name: "acc" for name in formats.MULTIPLE_CHOICE})
PIVOTS = ("en", "eng", "eng_Latn")
MGSM_STOPS = ("\nQuestion:", "\n\n\n")


@dataclasses.dataclass
class EvalOptions:
  """How the tasks are run (``polyglot-jax eval`` flags, ``config.evaluation``)."""
  shots: int = 0  # Multiple-choice and translation shots.
  mgsm_shots: int = 0  # MGSM chain-of-thought exemplars (from ``exemplars``).
  exemplars: str = ""  # MGSM exemplar file (JSONL question/answer or TSV).
  limit: int = 0  # At most this many items per language (0: all).
  batch_size: int = 16
  max_new_tokens: int = 128  # MGSM; translation uses at most this too.
  max_len: int = 0  # Context length; 0: the model's training seq_len.
  max_unknown: float = 0.5  # A language above this share of unk pieces is reported, not scored.
  spbleu_model: str = ""  # SentencePiece model for spBLEU (optional).
  samples: int = 3  # Generations kept per language in the results, for reading.
  template: str = ""  # MGSM: render each question with this instruction template (data.records.TEMPLATES).


def parse_tasks(entries: Sequence[str]) -> list[tuple[str, str]]:
  """``["xcopa=DIR", "mgsm=FILE"]`` (or one comma-separated string) → [(name, path)].

  Raises:
    ConfigError: an entry without ``=`` or a task name that is unknown.
  """
  out = []
  for entry in entries:
    for item in str(entry).split(","):
      item = item.strip()
      if not item:
        continue
      if "=" not in item:
        raise ConfigError(f"eval task '{item}' needs the form name=path (tasks: {sorted(formats.TASK_FORMATS)})")
      name, path = (s.strip() for s in item.split("=", 1))
      if name not in formats.TASK_FORMATS:
        raise ConfigError(f"eval task '{name}' is unknown; tasks: {sorted(formats.TASK_FORMATS)}")
      out.append((name, path))
  return out


class Scorer:
  """Log-likelihoods and generations of one model and tokenizer, in fixed-size batches."""

  def __init__(self, model, tokenizer, options: EvalOptions, max_len: int):
    self.model, self.tok, self.options = model, tokenizer, options
    self.max_len = max_len
    self.truncated = 0

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text)

  def unknown_share(self, texts: Sequence[str]) -> float:
    """Share of the pieces that are ``unk`` or byte-fallback pieces (characters the vocabulary lacks)."""
    ids = [i for t in texts for i in self.tok.encode(t)]
    return sum(bool(self.tok.is_unknown(i) or self.tok.is_byte(i)) for i in ids) / max(len(ids), 1)

  def _fit(self, context: list[int], continuation: list[int], room: int = 0) -> tuple[list[int], int]:
    """BOS + context + continuation cut to max_len (earliest context first); (ids, prompt length)."""
    keep = self.max_len - 1 - room
    body = context + continuation
    if len(body) > keep:
      self.truncated += 1
      body = body[len(body) - keep:]
    return [self.tok.bos_id()] + body, 1 + max(len(body) - len(continuation), 0)

  def logliks(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """Sum of log p(continuation | BOS + context) for each (context ids, continuation ids)."""
    from polyglot_jax.decode.generate import score
    seqs = [self._fit(c, x) for c, x in pairs]
    out: list[float] = []
    b = self.options.batch_size
    for start in range(0, len(seqs), b):
      chunk = seqs[start:start + b]
      # Fixed batch size (padded with a copy of the first row) keeps one compile per length bucket.
      padded = chunk + [chunk[0]] * (b - len(chunk))
      logps = score(self.model, [s for s, _ in padded], [n for _, n in padded])
      out += [float(v.sum()) for v in logps[:len(chunk)]]
    return out

  def token_nlls(self, docs: Sequence[list[int]]) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of documents given as ids without BOS/EOS, windowed to max_len."""
    from polyglot_jax.decode.generate import score
    windows = []
    for ids in docs:
      seq = [self.tok.bos_id()] + ids + [self.tok.eos_id()]
      for start in range(0, len(seq) - 1, self.max_len - 1):
        windows.append(seq[start:start + self.max_len])
    windows = [w for w in windows if len(w) > 1]
    total, count = 0.0, 0
    b = self.options.batch_size
    for start in range(0, len(windows), b):
      chunk = windows[start:start + b]
      logps = score(self.model, chunk + [chunk[0]] * (b - len(chunk)))
      for v in logps[:len(chunk)]:
        total -= float(v.sum())
        count += len(v)
    return total, count

  def generate(self, prompts: Sequence[list[int]], stops: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of BOS + prompt, cut at the first stop string."""
    from polyglot_jax.decode.generate import generate
    rows = [self._fit(p, [], room=max_new_tokens)[0] for p in prompts]
    eos = self.tok.eos_id()
    out = []
    b = self.options.batch_size
    for start in range(0, len(rows), b):
      chunk = rows[start:start + b]
      new = generate(self.model, chunk + [chunk[0]] * (b - len(chunk)), max_new_tokens,
                     stop_ids=(eos,) if eos >= 0 else ())
      for ids in new[:len(chunk)]:
        text = self.tok.decode([i for i in ids if i != eos])
        cut = min([text.index(s) for s in stops if s in text] or [len(text)])
        out.append(text[:cut])
    return out


def _limit(items: list, limit: int) -> list:
  return items[:limit] if limit > 0 else items


def _by_lang(items) -> dict[str, list]:
  out: dict[str, list] = {}
  for item in items:
    out.setdefault(item.lang, []).append(item)
  return out


def _pivot(langs: Sequence[str]) -> str:
  for p in PIVOTS:
    if p in langs:
      return p
  return langs[0]


def _same(a, b) -> bool:
  """Two predictions agree; no prediction (no number found) agrees with nothing."""
  return a is not None and b is not None and a == b


def _consistency(predictions: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Per language, the share of shared items predicted as the pivot language does; and all-languages agreement."""
  langs = sorted(predictions)
  if len(langs) < 2:
    return {}
  pivot = _pivot(langs)
  out: dict[str, Any] = {"pivot": pivot, "per_language": {}}
  for lang in langs:
    if lang == pivot:
      continue
    shared = set(predictions[lang]) & set(predictions[pivot])
    if shared:
      same = sum(_same(predictions[lang][i], predictions[pivot][i]) for i in shared)
      out["per_language"][lang] = same / len(shared)
  common = set.intersection(*(set(p) for p in predictions.values()))
  if common:
    out["all_languages"] = sum(all(_same(predictions[l][i], predictions[pivot][i]) for l in langs)
                               for i in common) / len(common)
    out["items"] = len(common)
  return out


def _encodable(scorer: Scorer, groups: dict[str, list], text_of: Callable[[Any], str], options: EvalOptions):
  """Splits languages into those scored and those reported as unencodable (share of unk pieces)."""
  keep, unencodable = {}, {}
  for lang, items in groups.items():
    share = scorer.unknown_share([text_of(x) for x in items[:50]])
    if share > options.max_unknown:
      unencodable[lang] = round(share, 4)
    else:
      keep[lang] = items
  return keep, unencodable


def run_perplexity(scorer: Scorer, path: str, options: EvalOptions) -> dict:
  texts = formats.read_text(path)
  groups = {lang: _limit(docs, options.limit) for lang, docs in texts.items()}
  keep, unencodable = _encodable(scorer, groups, lambda d: d, options)
  per_lang = {}
  for lang, docs in keep.items():
    nll, count = scorer.token_nlls([scorer.encode(d) for d in docs])
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    per_lang[lang] = {"ppl": math.exp(nll / max(count, 1)), "nll": nll / max(count, 1),
                      "bits_per_byte": nll / math.log(2) / max(n_bytes, 1), "tokens": count, "n": len(docs)}
  return {"per_language": per_lang, "unencodable": unencodable}


def run_multiple_choice(scorer: Scorer, name: str, path: str, options: EvalOptions) -> dict:
  items = formats.TASK_FORMATS[name](path)
  groups, unencodable = _encodable(scorer, _by_lang(items), lambda x: x.context + " " + " ".join(x.choices), options)
  per_lang, predictions = {}, {}
  for lang, all_items in groups.items():
    scored = _limit(all_items, options.limit)
    pairs, owners = [], []
    for idx, item in enumerate(scored):
      shots = [x for x in all_items if x.id != item.id][:options.shots]
      prefix = "".join(f"{x.context} {x.choices[x.label]}\n\n" for x in shots)
      context = scorer.encode(prefix + item.context)
      for c, choice in enumerate(item.choices):
        pairs.append((context, scorer.encode(" " + choice)))
        owners.append((idx, c))
    values = scorer.logliks(pairs)
    sums = [np.full(len(x.choices), -np.inf) for x in scored]
    for (idx, c), v in zip(owners, values):
      sums[idx][c] = v
    raw = [int(np.argmax(s)) for s in sums]
    norm = [int(np.argmax(s / np.asarray([max(len(ch), 1) for ch in x.choices]))) for s, x in zip(sums, scored)]
    labels = [x.label for x in scored]
    per_lang[lang] = {"acc": float(np.mean([p == y for p, y in zip(raw, labels)])),
                      "acc_norm": float(np.mean([p == y for p, y in zip(norm, labels)])), "n": len(scored)}
    predictions[lang] = {x.id: p for x, p in zip(scored, raw)}
  return {"per_language": per_lang, "unencodable": unencodable, "consistency": _consistency(predictions),
          "shots": options.shots}


def _mgsm_prompt(question: str, template: str = "") -> str:
  if template:
    from polyglot_jax.data.records import TEMPLATES
    return TEMPLATES[template][1].format(instruction=question)
  return f"Question: {question}\nStep-by-Step Answer:"


def run_mgsm(scorer: Scorer, path: str, options: EvalOptions) -> dict:
  from polyglot_jax.data.records import TEMPLATES
  if options.template and options.template not in TEMPLATES:
    raise ConfigError(f"eval template '{options.template}' is unknown; templates: {sorted(TEMPLATES)}")
  items = formats.read_mgsm(path)
  shots = formats.read_exemplars(options.exemplars)[:options.mgsm_shots] if options.mgsm_shots else []
  if options.mgsm_shots and len(shots) < options.mgsm_shots:
    raise ConfigError(f"mgsm_shots={options.mgsm_shots} but {options.exemplars} has {len(shots)} exemplars")
  prefix = "".join(f"{_mgsm_prompt(q, options.template)} {a}\n\n" for q, a in shots)
  groups, unencodable = _encodable(scorer, _by_lang(items), lambda x: x.question, options)
  per_lang, predictions, samples = {}, {}, {}
  for lang, all_items in groups.items():
    scored = _limit(all_items, options.limit)
    outs = scorer.generate([scorer.encode(prefix + _mgsm_prompt(x.question, options.template)) for x in scored],
                           MGSM_STOPS,
                           options.max_new_tokens)
    preds = [answers.extract_number(o) for o in outs]
    right = [p is not None and abs(p - x.answer) < 1e-6 for p, x in zip(preds, scored)]
    per_lang[lang] = {"acc": float(np.mean(right)), "no_number": sum(p is None for p in preds), "n": len(scored)}
    predictions[lang] = {x.id: p for x, p in zip(scored, preds)}
    samples[lang] = [{"id": x.id, "answer": x.answer, "prediction": p, "completion": o}
                     for x, p, o in list(zip(scored, preds, outs))[:options.samples]]
  return {"per_language": per_lang, "unencodable": unencodable, "consistency": _consistency(predictions),
          "shots": len(shots), "samples": samples}


def _language_name(code: str) -> str:
  from polyglot_jax.data import languages
  try:
    return languages.get(code).name
  except Exception:  # Unregistered codes are written as they are.
    return code


def _spbleu_model(options: EvalOptions) -> str:
  if options.spbleu_model:
    if not os.path.isfile(options.spbleu_model):
      raise ConfigError(f"spbleu_model '{options.spbleu_model}' does not exist")
    return options.spbleu_model
  try:
    from sacrebleu.utils import SACREBLEU_DIR
    candidate = os.path.join(SACREBLEU_DIR, "models", "flores200sacrebleuspm")
  except Exception:  # An older sacrebleu layout: no local model to find.
    return ""
  return candidate if os.path.isfile(candidate) else ""


def run_flores(scorer: Scorer, path: str, options: EvalOptions) -> dict:
  import sacrebleu
  lines = formats.read_parallel(path)
  langs = sorted(lines)
  if len(langs) < 2:
    raise DataError(f"{path}: translation needs at least two languages' files; found {langs}")
  pivot = _pivot(langs)
  groups, unencodable = _encodable(scorer, {l: lines[l] for l in langs}, lambda x: x, options)
  if pivot not in groups:
    raise DataError(f"{path}: the source language '{pivot}' is mostly unknown pieces for this tokenizer")
  spm_path = _spbleu_model(options)
  spm = None
  if spm_path:
    import sentencepiece
    spm = sentencepiece.SentencePieceProcessor(model_file=spm_path)
  src_name = _language_name(pivot)
  per_lang, samples = {}, {}
  for lang in groups:
    if lang == pivot:
      continue
    tgt_name = _language_name(lang)
    shots = "".join(f"{src_name}: {lines[pivot][i]}\n{tgt_name}: {lines[lang][i]}\n\n" for i in range(options.shots))
    index = _limit(list(range(options.shots, len(lines[pivot]))), options.limit)
    prompts = [scorer.encode(f"{shots}{src_name}: {lines[pivot][i]}\n{tgt_name}:") for i in index]
    hyps = [h.strip() for h in scorer.generate(prompts, ("\n",), options.max_new_tokens)]
    refs = [lines[lang][i] for i in index]
    row = {"chrf++": sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score, "n": len(index)}
    if spm is not None:
      pieces = lambda texts: [" ".join(spm.encode(t, out_type=str)) for t in texts]
      row["spbleu"] = sacrebleu.corpus_bleu(pieces(hyps), [pieces(refs)], tokenize="none").score
    per_lang[f"{pivot}-{lang}"] = row
    samples[f"{pivot}-{lang}"] = [{"source": lines[pivot][i], "reference": r, "hypothesis": h}
                                  for i, r, h in list(zip(index, refs, hyps))[:options.samples]]
  metrics = "chrF++ (sacrebleu, word order 2)" + (f"; spBLEU with {spm_path}" if spm_path else
                                                  "; spBLEU not computed: no SentencePiece model for it found locally")
  return {"per_language": per_lang, "unencodable": unencodable, "metrics": metrics, "shots": options.shots,
          "samples": samples}


def evaluate_model(model, tokenizer, tasks: Sequence[tuple[str, str]], options: EvalOptions | None = None, *,
                   max_len: int = 2048, progress: bool = True) -> dict:
  """Runs the tasks on one model.

  Args:
    model: a Decoder (``polyglot_jax.load(path).model``).
    tokenizer: its SentencePieceProcessor.
    tasks: (task name, path) pairs (``parse_tasks``).
    options: how to run them (shots, limits, batch size, ...).
    max_len: the context length when ``options.max_len`` is 0.
    progress: print a line per task as it finishes.

  Returns:
    {task: {"metric", "per_language": {lang: {metric: value, "n"}}, "mean", "unencodable",
    "truncated", "seconds", ...}}.
  """
  options = options or EvalOptions()
  scorer = Scorer(model, tokenizer, options, options.max_len or max_len)
  results = {}
  for name, path in tasks:
    t = time.perf_counter()
    scorer.truncated = 0
    if name == "perplexity":
      result = run_perplexity(scorer, path, options)
    elif name == "mgsm":
      result = run_mgsm(scorer, path, options)
    elif name == "flores":
      result = run_flores(scorer, path, options)
    else:
      result = run_multiple_choice(scorer, name, path, options)
    metric = MAIN_METRIC[name]
    values = [row[metric] for row in result["per_language"].values()]
    result.update(metric=metric, mean=float(np.mean(values)) if values else None, truncated=scorer.truncated,
                  seconds=round(time.perf_counter() - t, 2), path=path)
    results[name] = result
    if progress:
      print(f"eval {name}: {metric} mean {result['mean'] if result['mean'] is None else round(result['mean'], 4)} "
            f"over {len(values)} languages in {result['seconds']:.1f} s", flush=True)
  return results


def table(results: dict) -> str:
  """One text table per task: a row per language with every metric."""
  blocks = []
  for name, result in results.items():
    rows = result["per_language"]
    metrics = sorted({k for row in rows.values() for k in row if k != "n"}, key=lambda k: (k != result["metric"], k))
    head = ["language"] + metrics + ["n"]
    lines = [f"{name} ({result['metric']}; {result['seconds']} s)", "  ".join(f"{h:>12}" for h in head)]
    for lang, row in rows.items():
      cells = [lang] + [row.get(m, "") for m in metrics] + [row.get("n", "")]
      lines.append("  ".join(f"{c:>12.4f}" if isinstance(c, float) else f"{str(c):>12}" for c in cells))
    cons = result.get("consistency") or {}
    if "all_languages" in cons:
      lines.append(f"  consistency: same answer in every language on {cons['all_languages']:.3f} of "
                   f"{cons['items']} items (per language vs {cons['pivot']}: "
                   + ", ".join(f"{l} {v:.3f}" for l, v in cons["per_language"].items()) + ")")
    for lang, share in result.get("unencodable", {}).items():
      lines.append(f"  {lang}: not scored, {share:.0%} of its pieces are unknown to the tokenizer")
    if result.get("truncated"):
      lines.append(f"  {result['truncated']} sequences truncated to the context (earliest context dropped)")
    if "metrics" in result:
      lines.append(f"  metrics: {result['metrics']}")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def plot(results: dict, out_dir: str) -> list[str]:
  """A bar chart per task of its main metric per language; returns the PNG paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  for name, result in results.items():
    rows = result["per_language"]
    if not rows:
      continue
    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3))
    ax.bar(list(rows), [row[metric] for row in rows.values()], color="tab:blue")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: {metric} per language")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def write(results: dict, out_dir: str, meta: dict | None = None) -> str:
  """Writes ``results.json`` (with ``meta``), the PNG plots and ``table.txt``; returns the JSON path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({**(meta or {}), "tasks": results}, f, indent=2, ensure_ascii=False)
  with open(os.path.join(out_dir, "table.txt"), "w", encoding="utf-8") as f:
    f.write(table(results) + "\n")
  plot(results, out_dir)
  return path


def scalars(results: dict) -> dict[str, float]:
  """Flat ``harness/<task>/<metric>/<lang>`` and ``harness/<task>/<metric>`` (mean) values for metric writers."""
  out = {}
  for name, result in results.items():
    metric = result["metric"]
    if result["mean"] is not None:
      out[f"harness/{name}/{metric}"] = float(result["mean"])
    for lang, row in result["per_language"].items():
      out[f"harness/{name}/{metric}/{lang}"] = float(row[metric])
  return out
