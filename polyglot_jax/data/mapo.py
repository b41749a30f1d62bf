"""MAPO preference building: English reasoning as the internal teacher of the other languages.

    polyglot-jax data mapo --model SFT_RUN --input parallel_questions.jsonl --out prefs.jsonl
        [--scorer MODEL] [--num_samples 4] [--temperature 0.8] [--max_new_tokens 128]
        [--template alpaca] [--pivot en] [--batch_size 16] [--seed 0]

Input records: ``{"id", "lang", "question", "answer", "en_question"}`` (what
``polyglot-jax data synth-math`` writes as parallel_questions.jsonl);
``answer`` is the number the reasoning must reach. For every question:

1. the model answers the English question (``en_question``) greedily: the
   English reasoning is the teacher;
2. it samples ``num_samples`` answers to the non-English question;
3. each sample gets an alignment score from a translation-likelihood scorer
   (any model ``polyglot_jax.load`` reads; default the model itself):
   ``alignment = 1 / mean cross-entropy of the English answer given the sample``,
   the English answer scored as a completion of
   ``"<sample>\\nEnglish: "`` (``decode.score``);
4. ``select_pair``: chosen is the correct sample (its extracted number equals
   ``answer``) with the highest alignment; rejected is the sample with the
   lowest alignment below it. Questions without a correct sample, without a
   lower-scored sample, or whose two texts are equal give no pair, and the
   reason is counted.

Output: preference records ``{"prompt", "chosen", "rejected", "lang", "id",
"alignment_chosen", "alignment_rejected"}`` (the ``preference`` record kind;
the prompt is the question rendered with the instruction template SFT used),
and a printed report of how many questions gave a pair and why the others
did not.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from typing import Callable, Sequence

from polyglot_jax.data.jsonl import json_objects
from polyglot_jax.errors import DataError

NO_CORRECT = "no sampled answer reaches the right number"
NO_LOWER = "no correct answer has a lower-aligned sample below it"
SAME_TEXT = "chosen == rejected (identical texts)"
ENGLISH_WRONG = "the English answer is wrong (no teacher)"


def select_pair(correct: Sequence[bool], alignment: Sequence[float], texts: Sequence[str]):
  """Indices (chosen, rejected) among one question's samples, or the reason there is no pair.

  Args:
    correct: per sample, whether its final number is right.
    alignment: per sample, its alignment score with the English answer.
    texts: the samples.

  Returns:
    (chosen index, rejected index), or a reason string (one of this module's constants).
  """
  right = [i for i, ok in enumerate(correct) if ok]
  if not right:
    return NO_CORRECT
  chosen = max(right, key=lambda i: (alignment[i], -i))
  lower = [i for i in range(len(texts)) if alignment[i] < alignment[chosen]]
  if not lower:
    return NO_LOWER
  rejected = min(lower, key=lambda i: (alignment[i], i))
  if texts[chosen].strip() == texts[rejected].strip():
    return SAME_TEXT
  return chosen, rejected


def alignment_score(token_logps) -> float:
  """1 / mean cross-entropy (nats per token) of the English answer's tokens."""
  ce = -float(sum(token_logps)) / max(len(token_logps), 1)
  return math.inf if ce <= 0 else 1.0 / ce


def build_preferences(items: Sequence[dict], *, english_answer: Callable[[list[str]], list[str]],
                      sample: Callable[[list[str]], list[list[str]]],
                      align: Callable[[list[tuple[str, str]]], list[float]],
                      is_correct: Callable[[str, float], bool], prompt_of: Callable[[str], str],
                      require_english_correct: bool = False) -> tuple[list[dict], Counter]:
  """Preference records from parallel questions with injected model calls (the CLI passes real ones).

  Args:
    items: non-English question records with ``id, lang, question, answer, en_question``.
    english_answer: English questions → the teacher's answers.
    sample: questions → per question, its sampled answers.
    align: (sample, English answer) pairs → alignment scores.
    is_correct: (answer text, right number) → whether it is right.
    prompt_of: a question → the prompt text stored in the record.
    require_english_correct: skip questions whose English answer is wrong.

  Returns:
    (preference records, Counter of reasons for questions without a pair).
  """
  teachers = english_answer([x["en_question"] for x in items])
  samples = sample([x["question"] for x in items])
  flat = [(s, t) for ss, t in zip(samples, teachers) for s in ss]
  scores = align(flat) if flat else []
  out, reasons = [], Counter()
  k = 0
  for item, teacher, ss in zip(items, teachers, samples):
    align_scores = scores[k:k + len(ss)]
    k += len(ss)
    if require_english_correct and not is_correct(teacher, item["answer"]):
      reasons[ENGLISH_WRONG] += 1
      continue
    picked = select_pair([is_correct(s, item["answer"]) for s in ss], align_scores, ss)
    if isinstance(picked, str):
      reasons[picked] += 1
      continue
    c, r = picked
    out.append({"prompt": prompt_of(item["question"]), "chosen": ss[c], "rejected": ss[r], "lang": item["lang"],
                "id": item["id"], "alignment_chosen": align_scores[c], "alignment_rejected": align_scores[r],
                "english_answer": teacher})
  return out, reasons


def _read(path: str, pivot: str) -> list[dict]:
  items = []
  for lineno, record in json_objects(path, "MAPO", "--input"):
    missing = [k for k in ("id", "lang", "question", "answer", "en_question") if k not in record]
    if missing:
      raise DataError(f"{path}:{lineno}: missing {missing}; MAPO records are "
                      '{"id", "lang", "question", "answer", "en_question"}')
    if not isinstance(record["answer"], (int, float)):
      raise DataError(f"{path}:{lineno}: 'answer' must be a number, got {record['answer']!r}")
    if record["lang"] != pivot:
      items.append(record)
  if not items:
    raise DataError(f"{path}: no question in a language other than the pivot '{pivot}'")
  return items


def main(argv: list[str]) -> int:
  from tqdm import tqdm

  import polyglot_jax
  from polyglot_jax.data.records import TEMPLATES
  from polyglot_jax.decode.generate import generate, score
  from polyglot_jax.eval.answers import extract_number

  parser = argparse.ArgumentParser(prog="polyglot-jax data mapo")
  parser.add_argument("--model", required=True, help="the (SFT) model that answers")
  parser.add_argument("--scorer", default="", help="translation-likelihood scorer model (default: --model)")
  parser.add_argument("--input", required=True, help='JSONL {"id", "lang", "question", "answer", "en_question"}')
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_samples", type=int, default=4)
  parser.add_argument("--temperature", type=float, default=0.8)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--template", default="alpaca", help="the instruction template the model was tuned with")
  parser.add_argument("--pivot", default="en")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.template not in TEMPLATES:
    raise DataError(f"--template '{args.template}' is unknown; templates: {sorted(TEMPLATES)}")
  if args.num_samples < 2:
    raise DataError("--num_samples must be at least 2: a pair needs two samples")
  items = _read(args.input, args.pivot)
  loaded = polyglot_jax.load(args.model)
  scorer = polyglot_jax.load(args.scorer) if args.scorer else loaded
  tok, stok = loaded.tokenizer, scorer.tokenizer
  if tok is None or stok is None:
    raise DataError("the model and the scorer need a SentencePiece tokenizer (tokenizer.model)")
  eos = tok.eos_id()
  template = TEMPLATES[args.template][1]

  def prompt_of(question: str) -> str:
    return template.format(instruction=question, input="")

  def run(questions: list[str], temperature: float, seed: int) -> list[str]:
    out = []
    prompts = [[tok.bos_id()] + tok.encode(prompt_of(q)) for q in questions]
    for n, start in enumerate(tqdm(range(0, len(prompts), args.batch_size), desc="generate", unit="batch")):
      new = generate(loaded.model, prompts[start:start + args.batch_size], args.max_new_tokens,
                     temperature=temperature, top_p=args.top_p, stop_ids=(eos,), seed=seed + n)
      out += [tok.decode([i for i in ids if i != eos]).strip() for ids in new]
    return out

  def sample(questions: list[str]) -> list[list[str]]:
    per_round = [run(questions, args.temperature, args.seed + 1000 * (r + 1)) for r in range(args.num_samples)]
    return [list(s) for s in zip(*per_round)]

  def align(pairs: list[tuple[str, str]]) -> list[float]:
    scores = []
    for start in tqdm(range(0, len(pairs), args.batch_size), desc="align", unit="batch"):
      chunk = pairs[start:start + args.batch_size]
      seqs, lengths = [], []
      for sample_text, english in chunk:
        prompt = [stok.bos_id()] + stok.encode(f"{sample_text}\nEnglish: ")
        seqs.append(prompt + stok.encode(english))
        lengths.append(len(prompt))
      scores += [alignment_score(v) for v in score(scorer.model, seqs, lengths)]
    return scores

  def is_correct(text: str, answer: float) -> bool:
    value = extract_number(text)
    return value is not None and abs(value - float(answer)) < 1e-6

  records, reasons = build_preferences(items, english_answer=lambda qs: run(qs, 0.0, args.seed), sample=sample,
                                       align=align, is_correct=is_correct, prompt_of=prompt_of)
  with open(args.out, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  per_lang = Counter(r["lang"] for r in records)
  print(f"MAPO: {len(records)} of {len(items)} questions gave a pair "
        f"({', '.join(f'{l} {n}' for l, n in sorted(per_lang.items())) or 'none'}); wrote {args.out}", flush=True)
  for reason, n in reasons.most_common():
    print(f"  no pair for {n}: {reason}", flush=True)
  return 0
