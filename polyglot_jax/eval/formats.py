"""Offline readers for public multilingual evaluation sets, in their released file layouts.

Every reader takes a file, or a folder that it searches (subfolders too) for files
named as the public release names them, and takes the language from that name; an
explicit ``lang=`` overrides it. Language codes are kept as the files spell them
("it", "eng_Latn"); mapping them onto the language registry is the caller's job.

Text is read as UTF-8 (a leading BOM is tolerated), lines end at ``\\n`` only (a
``\\r`` before it is dropped; the XCOPA release uses CRLF), and TSV fields are split
on tabs with no quote handling: the releases contain unbalanced quotes, and FLORES-200
ben_Beng line 1 is stored CSV-quoted, which is kept as it is. Whitespace-only lines of
JSONL and TSV files are not records and are skipped; every other problem is a
``DataError`` naming the file, line and field. Ids must be unique per language, which
catches a folder that mixes two splits of one set.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Callable, Iterator

from polyglot_jax.errors import DataError
from polyglot_jax.eval.answers import extract_number, parse_number

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Choice:
  """One multiple-choice item; each choice is scored as ``context + " " + choice``."""
  id: str  # Stable id, the same across languages for parallel sets.
  lang: str
  context: str  # Text that every choice continues (the prompt part).
  choices: tuple[str, ...]  # Continuations.
  label: int  # 0-based index of the right choice.
  source: str  # "path:line" of the record.


@dataclasses.dataclass(frozen=True)
class MathItem:
  """One math word problem with a numeric answer."""
  id: str  # 0-based record index in its file, the same across languages.
  lang: str
  question: str
  answer: float
  answer_text: str  # The answer as the file writes it.
  source: str  # "path:line" of the record.


# ---------------------------------------------------------------------------
# Files, lines and fields.
# ---------------------------------------------------------------------------


def _inputs(path: PathLike, task: str, name: re.Pattern, looked_for: str,
            one_per_lang: bool = True) -> list[tuple[pathlib.Path, str | None]]:
  """The files to read and the language each name gives (None where the name gives none)."""
  root = pathlib.Path(path)
  if root.is_file():
    match = name.fullmatch(root.name)
    return [(root, match.group("lang") if match else None)]
  if not root.is_dir():
    raise DataError(f"{root}: no such file or directory; pass one {task} file or a folder of them")
  files = sorted(f for f in root.rglob("*") if f.is_file() and name.fullmatch(f.name))
  if not files:
    raise DataError(f"{root}: no {task} files in this folder (looked for {looked_for}); "
                    f"point at a file or a folder holding such files")
  found = [(f, name.fullmatch(f.name).group("lang")) for f in files]
  if one_per_lang:
    seen: dict[str, pathlib.Path] = {}
    for f, lang in found:
      key = lang or "(named in the records)"  # Two files without a language in the name clash too.
      if key in seen:
        raise DataError(f"{root}: two {task} files for language '{key}' ({seen[key]}, {f}); "
                        f"point at one file or a folder holding one split")
      seen[key] = f
  return found


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  """(1-based line number, text) of every line; a final newline starts no extra line."""
  try:
    data = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror}); check the path and permissions") from None
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  lines = data.split(b"\n")
  if lines[-1] == b"":
    lines.pop()
  for lineno, raw in enumerate(lines, 1):
    try:
      yield lineno, raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{lineno}: not UTF-8 (bad byte at column {e.start + 1}); "
                      f"save the file as UTF-8") from None


def _jsonl(path: pathlib.Path, task: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) of every non-blank line of a JSONL file."""
  for lineno, line in _lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                      f"a {task} file holds one JSON object per line") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object; "
                      f"a {task} file holds one JSON object per line")
    yield lineno, record


def _tsv(path: pathlib.Path, task: str, header: tuple[str, ...] | None,
         columns: int | None = None) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
  """(line number, row) of every non-blank TSV line after the header.

  With ``header`` (the columns a header must hold) the first line is the header and
  each row is a dict keyed by it; without, each row is a list of exactly ``columns``.
  """
  names: list[str] | None = None
  for lineno, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split("\t")
    if header is not None and names is None:
      names = [f.strip() for f in fields]
      missing = [c for c in header if c not in names]
      if missing:
        raise DataError(f"{path}:{lineno}: {task} header lacks column '{missing[0]}' "
                        f"(expected {', '.join(header)}); the first line must name the columns")
      continue
    expected = len(names) if names is not None else columns
    if len(fields) != expected:
      what = f"the header's {expected}" if names is not None else str(expected)
      raise DataError(f"{path}:{lineno}: {task} row has {len(fields)} tab-separated columns, not {what}; "
                      f"a field holds a tab or is missing")
    yield lineno, dict(zip(names, fields)) if names is not None else fields
  if header is not None and names is None:
    raise DataError(f"{path}: empty {task} file; it needs a header line and rows")


def _field(record: dict[str, Any], key: str, source: str, task: str, expected: tuple[str, ...]) -> Any:
  if key not in record:
    raise DataError(f"{source}: {task} record lacks '{key}' (expected {', '.join(expected)}); "
                    f"fix or remove the record")
  return record[key]


def _text(record: dict[str, Any], key: str, source: str, task: str, expected: tuple[str, ...]) -> str:
  value = _field(record, key, source, task, expected)
  if not isinstance(value, str) or not value.strip():
    raise DataError(f"{source}: {task} field '{key}' is {value!r}, not a non-empty string; "
                    f"fix or remove the record")
  return value.strip()


def _label(value: Any, allowed: dict[str, int], source: str, task: str, key: str) -> int:
  """The 0-based label that ``value`` (an int, or a string in ``allowed``) names."""
  if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip().lower() not in allowed:
    raise DataError(f"{source}: {task} field '{key}' is {value!r}, not one of "
                    f"{', '.join(allowed)}; fix or remove the record")
  return allowed[str(value).strip().lower()]


def _file_lang(explicit: str | None, from_name: str | None, path: pathlib.Path, task: str,
               naming: str) -> str:
  if explicit:
    return explicit
  if from_name:
    return from_name
  raise DataError(f"{path}: no language for this {task} file (its name is not {naming}); "
                  f"rename it or pass lang=")


def _record_lang(explicit: str | None, record_lang: Any, from_name: str | None, source: str,
                 task: str, key: str, seen: set[str]) -> str:
  """The language of one record: lang=, else the record's own field, else the file name."""
  if record_lang is not None:
    if not isinstance(record_lang, str) or not record_lang.strip():
      raise DataError(f"{source}: {task} field '{key}' is {record_lang!r}, not a language code; "
                      f"fix the record")
    seen.add(record_lang.strip())
    if explicit and len(seen) > 1:
      raise DataError(f"{source}: {task} file mixes languages ({', '.join(sorted(seen))}), so lang='{explicit}' "
                      f"would mislabel them; drop lang= (each record keeps its own) or split the file")
  lang = explicit or (record_lang.strip() if record_lang is not None else None) or from_name
  if not lang:
    raise DataError(f"{source}: {task} record has no '{key}' and the file name gives no language; "
                    f"add '{key}' or pass lang=")
  return lang


def _unique(items: list, task: str, files: list[tuple[pathlib.Path, str | None]]) -> list:
  """``items`` after checking that every file gave some and no (lang, id) repeats (two splits in one folder)."""
  empty = set(map(str, (f for f, _ in files))) - {item.source.rsplit(":", 1)[0] for item in items}
  if empty:
    raise DataError(f"{sorted(empty)[0]}: no {task} records in this file; fill it or remove it")
  first: dict[tuple[str, str], str] = {}
  for item in items:
    key = (item.lang, item.id)
    if key in first:
      raise DataError(f"{item.source}: {task} id '{item.id}' for language '{item.lang}' repeats "
                      f"{first[key]}; read one split at a time and keep ids unique")
    first[key] = item.source
  return items


# ---------------------------------------------------------------------------
# XCOPA.
# ---------------------------------------------------------------------------

# The connectives of lm-eval-harness's XCOPA prompts, for comparable numbers. Its
# Haitian "poukisa" means "why" rather than "because"; it is kept all the same.
XCOPA_CONNECTIVES: dict[str, dict[str, str]] = {
    "en": {"cause": "because", "effect": "therefore"},
    "et": {"cause": "sest", "effect": "seetõttu"},
    "ht": {"cause": "poukisa", "effect": "donk sa"},
    "id": {"cause": "karena", "effect": "maka"},
    "it": {"cause": "perché", "effect": "quindi"},
    "qu": {"cause": "imataq", "effect": "chaymi"},
    "sw": {"cause": "kwa sababu", "effect": "kwa hiyo"},
    "ta": {"cause": "காரணமாக", "effect": "எனவே"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "tr": {"cause": "çünkü", "effect": "bu yüzden"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
    "zh": {"cause": "因为", "effect": "所以"},
}

_XCOPA_NAME = re.compile(r"(?:val|test|train)\.(?P<lang>[^.]+)\.jsonl")
_XCOPA_FIELDS = ("premise", "choice1", "choice2", "question", "label")
# Sentence-final punctuation removed from a premise. Thai and Tamil premises end
# without any, so nothing is cut there (lm-eval-harness cuts the last character).
_FINAL_PUNCT = ".。．!?！？।"


def xcopa_connective(lang: str, question: str) -> str:
  """The word that joins an XCOPA premise to its cause or effect.

  Args:
    lang: a language code; only its part before "_" or "-" is looked up ("zh_Hans"
      finds "zh"). A language outside ``XCOPA_CONNECTIVES`` gets the English ones of the
      original COPA prompt ("because", "therefore"); add a row to do better.
    question: "cause" or "effect".

  Returns:
    The connective.
  """
  base = re.split(r"[_-]", lang, maxsplit=1)[0].lower()
  return XCOPA_CONNECTIVES.get(base, XCOPA_CONNECTIVES["en"])[question]


def _lower_first(text: str, lang: str) -> str:
  """``text`` with its first letter lowercased (a no-op in scripts without case)."""
  if not text:
    return text
  first = text[0]
  if re.split(r"[_-]", lang, maxsplit=1)[0].lower() in ("tr", "az"):
    first = {"I": "ı", "İ": "i"}.get(first, first)  # Turkish dotted and dotless i.
  return first.lower() + text[1:]


def read_xcopa(path: PathLike, lang: str | None = None) -> list[Choice]:
  """Reads XCOPA JSONL (cambridgeltl/xcopa ``data/<lang>/val.<lang>.jsonl``).

  Context is the premise without its final punctuation, a space, and the language's
  connective for the question ("because" for cause, "therefore" for effect; see
  ``xcopa_connective``); the choices are choice1 and choice2 with their first letter
  lowercased, as lm-eval-harness does.

  Args:
    path: a ``val|test|train.<lang>.jsonl`` file or a folder of them, one per language.
    lang: language of every record; by default taken from the file name.

  Returns:
    One ``Choice`` per record; ``id`` is the record's ``idx`` (else its 0-based index).
  """
  items = []
  files = _inputs(path, "XCOPA", _XCOPA_NAME, "val.<lang>.jsonl, test.<lang>.jsonl")
  for file, name_lang in files:
    file_lang = _file_lang(lang, name_lang, file, "XCOPA", "val.<lang>.jsonl or test.<lang>.jsonl")
    for index, (lineno, record) in enumerate(_jsonl(file, "XCOPA")):
      source = f"{file}:{lineno}"
      premise = _text(record, "premise", source, "XCOPA", _XCOPA_FIELDS)
      choices = tuple(_lower_first(_text(record, key, source, "XCOPA", _XCOPA_FIELDS), file_lang)
                      for key in ("choice1", "choice2"))
      question = _field(record, "question", source, "XCOPA", _XCOPA_FIELDS)
      if question not in ("cause", "effect"):
        raise DataError(f"{source}: XCOPA field 'question' is {question!r}, not 'cause' or 'effect'; "
                        f"fix or remove the record")
      label = _label(_field(record, "label", source, "XCOPA", _XCOPA_FIELDS), {"0": 0, "1": 1},
                     source, "XCOPA", "label")
      premise = premise[:-1].rstrip() if premise[-1] in _FINAL_PUNCT else premise
      items.append(Choice(id=str(record.get("idx", index)), lang=file_lang,
                          context=f"{premise} {xcopa_connective(file_lang, question)}",
                          choices=choices, label=label, source=source))
  return _unique(items, "XCOPA", files)


# ---------------------------------------------------------------------------
# XNLI.
# ---------------------------------------------------------------------------

# xnli.dev.tsv (XNLI-1.0, all languages, a 'language' column), xnli.test.de.tsv,
# multinli.train.de.tsv (XNLI-MT-1.0), and the same names as .jsonl.
_XNLI_NAME = re.compile(r"(?:xnli|multinli)\.[^.]+(?:\.(?P<lang>[^.]+))?\.(?:tsv|jsonl)")
_XNLI_KEYS = {"premise": ("premise", "sentence1"), "hypothesis": ("hypothesis", "hypo", "sentence2"),
              "label": ("label", "gold_label")}
_XNLI_LABELS = {"0": 0, "1": 1, "2": 2, "entailment": 0, "neutral": 1, "contradiction": 2, "contradictory": 2}
XNLI_CHOICES = ("True", "Neither", "False")


def _xnli_record(record: dict[str, Any], source: str) -> tuple[str, str, Any]:
  values = []
  for key, aliases in _XNLI_KEYS.items():
    name = next((a for a in aliases if a in record), None)
    if name is None:
      raise DataError(f"{source}: XNLI record lacks '{key}' (expected premise|sentence1, "
                      f"hypothesis|hypo|sentence2, label|gold_label); fix the file")
    values.append(record[name] if key == "label" else _text(record, name, source, "XNLI", tuple(aliases)))
  return values[0], values[1], values[2]


def read_xnli(path: PathLike, lang: str | None = None) -> list[Choice]:
  """Reads XNLI: TSV with a header, or JSONL, with premise, hypothesis and label.

  Accepted columns: premise|sentence1, hypothesis|hypo|sentence2, label|gold_label
  (0/1/2 or entailment/neutral/contradiction, also XNLI-MT's "contradictory"), and
  optionally language|lang and pairID. The "premise, right? Yes|Also|No, hypothesis"
  prompt puts the choice mid-sentence, which log-likelihood of a continuation cannot
  score, so the context is ``premise + " Question: " + hypothesis + " True, False or
  Neither? Answer:"`` and the choices are ("True", "Neither", "False"), in label order
  entailment=0, neutral=1, contradiction=2.

  Args:
    path: ``xnli.<split>[.<lang>].tsv|jsonl`` or ``multinli.<split>.<lang>.tsv``, or a
      folder of them.
    lang: language of every record; by default the record's language|lang field, else
      the file name. A file that mixes languages cannot take one ``lang``.

  Returns:
    One ``Choice`` per record; ``id`` is pairID (the same across languages) or else the
    0-based record index.
  """
  items = []
  files = _inputs(path, "XNLI", _XNLI_NAME, "xnli.<split>[.<lang>].tsv|jsonl, multinli.<split>.<lang>.tsv")
  for file, name_lang in files:
    seen: set[str] = set()
    if file.suffix == ".jsonl":
      rows: Iterator = _jsonl(file, "XNLI")
    else:
      rows = _tsv(file, "XNLI", header=())
    for index, (lineno, record) in enumerate(rows):
      source = f"{file}:{lineno}"
      premise, hypothesis, raw_label = _xnli_record(record, source)
      label = _label(raw_label, _XNLI_LABELS, source, "XNLI", "label")
      lang_key = "language" if "language" in record else "lang"
      record_lang = _record_lang(lang, record.get(lang_key), name_lang, source, "XNLI", lang_key, seen)
      pair_id = record.get("pairID")
      items.append(Choice(id=str(pair_id).strip() if pair_id not in (None, "") else str(index), lang=record_lang,
                          context=f"{premise} Question: {hypothesis} True, False or Neither? Answer:",
                          choices=XNLI_CHOICES, label=label, source=source))
  return _unique(items, "XNLI", files)


# ---------------------------------------------------------------------------
# XStoryCloze.
# ---------------------------------------------------------------------------

_XSTORYCLOZE_NAME = re.compile(r"spring2016\.val\.(?P<lang>[^.]+)\.tsv\.split_20_80_(?:train|eval)\.tsv")
_XSTORYCLOZE_COLUMNS = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")


def read_xstorycloze(path: PathLike, lang: str | None = None) -> list[Choice]:
  """Reads XStoryCloze TSV (header InputStoryid, InputSentence1-4, RandomFifthSentenceQuiz1-2, AnswerRightEnding).

  Context is the four sentences joined with spaces; the choices are the two endings.

  Args:
    path: a ``spring2016.val.<lang>.tsv.split_20_80_{train,eval}.tsv`` file or a folder
      of them, one per language.
    lang: language of every row; by default taken from the file name.

  Returns:
    One ``Choice`` per story; ``id`` is InputStoryid (the same across languages), or the
    0-based row index where it is empty; ``label`` is AnswerRightEnding - 1.
  """
  items = []
  files = _inputs(path, "XStoryCloze", _XSTORYCLOZE_NAME, "spring2016.val.<lang>.tsv.split_20_80_{train,eval}.tsv")
  for file, name_lang in files:
    file_lang = _file_lang(lang, name_lang, file, "XStoryCloze",
                           "spring2016.val.<lang>.tsv.split_20_80_{train,eval}.tsv")
    for index, (lineno, row) in enumerate(_tsv(file, "XStoryCloze", header=_XSTORYCLOZE_COLUMNS)):
      source = f"{file}:{lineno}"
      sentences = [_text(row, f"InputSentence{i}", source, "XStoryCloze", _XSTORYCLOZE_COLUMNS) for i in range(1, 5)]
      endings = tuple(_text(row, f"RandomFifthSentenceQuiz{i}", source, "XStoryCloze", _XSTORYCLOZE_COLUMNS)
                      for i in (1, 2))
      label = _label(row["AnswerRightEnding"], {"1": 0, "2": 1}, source, "XStoryCloze", "AnswerRightEnding")
      items.append(Choice(id=row["InputStoryid"].strip() or str(index), lang=file_lang, context=" ".join(sentences),
                          choices=endings, label=label, source=source))
  return _unique(items, "XStoryCloze", files)


# ---------------------------------------------------------------------------
# Belebele.
# ---------------------------------------------------------------------------

_BELEBELE_NAME = re.compile(r"(?P<lang>[A-Za-z]{2,3}_[A-Za-z]{4})\.jsonl")
_BELEBELE_FIELDS = ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
                    "correct_answer_num")


def read_belebele(path: PathLike, lang: str | None = None) -> list[Choice]:
  """Reads Belebele JSONL (facebook/belebele ``data/<lang>_<Script>.jsonl``).

  Context is ``"Passage: <flores_passage>\\nQuestion: <question>\\nAnswer:"``; the
  choices are mc_answer1..4.

  Args:
    path: a ``<lang>_<Script>.jsonl`` file or a folder of them, one per language.
    lang: language of every record; by default the record's ``dialect``, else the
      file name. A file that mixes dialects cannot take one ``lang``.

  Returns:
    One ``Choice`` per record; ``id`` is ``<link>#<question_number>`` (the same across
    languages) or the 0-based record index where either is absent; ``label`` is
    correct_answer_num - 1.
  """
  items = []
  files = _inputs(path, "Belebele", _BELEBELE_NAME, "<lang>_<Script>.jsonl")
  for file, name_lang in files:
    seen: set[str] = set()
    for index, (lineno, record) in enumerate(_jsonl(file, "Belebele")):
      source = f"{file}:{lineno}"
      passage, question, *answers = (_text(record, key, source, "Belebele", _BELEBELE_FIELDS)
                                     for key in _BELEBELE_FIELDS[:-1])
      label = _label(_field(record, "correct_answer_num", source, "Belebele", _BELEBELE_FIELDS),
                     {"1": 0, "2": 1, "3": 2, "4": 3}, source, "Belebele", "correct_answer_num")
      record_lang = _record_lang(lang, record.get("dialect"), name_lang, source, "Belebele", "dialect", seen)
      link, number = record.get("link"), record.get("question_number")
      item_id = f"{link}#{number}" if link not in (None, "") and number not in (None, "") else str(index)
      items.append(Choice(id=item_id, lang=record_lang, context=f"Passage: {passage}\nQuestion: {question}\nAnswer:",
                          choices=tuple(answers), label=label, source=source))
  return _unique(items, "Belebele", files)


# ---------------------------------------------------------------------------
# MGSM and few-shot exemplars.
# ---------------------------------------------------------------------------

_MGSM_NAME = re.compile(r"mgsm_(?P<lang>[^.]+)\.tsv")


def read_mgsm(path: PathLike, lang: str | None = None) -> list[MathItem]:
  """Reads MGSM TSV (google-research/url-nlp ``mgsm/mgsm_<lang>.tsv``): ``question<TAB>answer``, no header.

  The answer column must be exactly one number ("18", "1,000", "-2.5"; read as
  ``answers.parse_number`` reads it). A first line "question<TAB>answer" is taken for
  a header and skipped.

  Args:
    path: an ``mgsm_<lang>.tsv`` file or a folder of them, one per language.
    lang: language of every row; by default taken from the file name.

  Returns:
    One ``MathItem`` per row; ``id`` is the 0-based row index (the same across languages).
  """
  items = []
  files = _inputs(path, "MGSM", _MGSM_NAME, "mgsm_<lang>.tsv")
  for file, name_lang in files:
    file_lang = _file_lang(lang, name_lang, file, "MGSM", "mgsm_<lang>.tsv")
    index = 0
    for lineno, (question, answer_text) in _tsv(file, "MGSM (question<TAB>answer)", header=None, columns=2):
      source = f"{file}:{lineno}"
      if index == 0 and (question.strip().lower(), answer_text.strip().lower()) == ("question", "answer"):
        continue
      if not question.strip():
        raise DataError(f"{source}: MGSM column 1 'question' is empty; fix or remove the row")
      answer = parse_number(answer_text)
      if answer is None:
        raise DataError(f"{source}: MGSM column 2 'answer' is {answer_text!r}, not a number; "
                        f"the row must be question<TAB>number")
      items.append(MathItem(id=str(index), lang=file_lang, question=question.strip(), answer=answer,
                            answer_text=answer_text.strip(), source=source))
      index += 1
  return _unique(items, "MGSM", files)


def read_exemplars(path: PathLike) -> list[tuple[str, str]]:
  """Reads few-shot exemplars for math prompts.

  A ``.tsv`` file is ``question<TAB>answer`` lines; any other file is JSONL with
  {"question", "answer"}. Each answer is a worked solution that ends with its number
  ("... The answer is 11."); an answer with no number at all is an error.

  Args:
    path: the exemplar file.

  Returns:
    (question, answer) pairs in file order.
  """
  file = pathlib.Path(path)
  if not file.is_file():
    raise DataError(f"{file}: no such exemplar file; pass a JSONL {{question, answer}} or a question<TAB>answer .tsv")
  fields = ("question", "answer")
  if file.suffix == ".tsv":
    rows = ((lineno, dict(zip(fields, row))) for lineno, row in _tsv(file, "exemplar (question<TAB>answer)",
                                                                     header=None, columns=2))
  else:
    rows = _jsonl(file, "exemplar")
  pairs = []
  for lineno, record in rows:
    source = f"{file}:{lineno}"
    question, answer = (_text(record, key, source, "exemplar", fields) for key in fields)
    if extract_number(answer) is None:
      raise DataError(f"{source}: exemplar 'answer' holds no number; end it with \"The answer is N.\"")
    pairs.append((question, answer))
  if not pairs:
    raise DataError(f"{file}: no exemplars in this file; add {{question, answer}} records")
  return pairs


# ---------------------------------------------------------------------------
# Parallel sentences (FLORES) and held-out text (perplexity).
# ---------------------------------------------------------------------------

_PARALLEL_NAME = re.compile(r"(?P<lang>[^.]+)\.(?:devtest|dev|txt)")


def read_parallel(path_or_dir: PathLike, langs: list[str] | tuple[str, ...] | None = None) -> dict[str, list[str]]:
  """Reads line-aligned parallel text, FLORES-style: one sentence a line, one file a language.

  Lines are kept as they are (only the line end is removed), empty ones included, so
  that line i is the same sentence in every language.

  Args:
    path_or_dir: a ``<lang>.devtest``, ``<lang>.dev`` or ``<lang>.txt`` file (FLORES-200
      names them ``eng_Latn.devtest``), or a folder of them with one split.
    langs: the languages to keep, by file-name code; all when None. Each must exist.

  Returns:
    {language: sentences}, languages in file-name order; every list is equally long.
  """
  found = _inputs(path_or_dir, "parallel-text", _PARALLEL_NAME, "<lang>.devtest, <lang>.dev, <lang>.txt")
  files = {(name_lang or file.name.split(".")[0]): file for file, name_lang in found}
  if langs is not None:
    missing = [lang for lang in langs if lang not in files]
    if missing:
      raise DataError(f"{path_or_dir}: no file for language(s) {', '.join(missing)} (found {', '.join(files)}); "
                      f"fix langs= or add <lang>.devtest files")
    files = {lang: files[lang] for lang in files if lang in langs}
  texts = {lang: [line for _, line in _lines(file)] for lang, file in files.items()}
  counts = collections.Counter(len(lines) for lines in texts.values())
  if len(counts) > 1:
    usual = counts.most_common(1)[0][0]
    reference = next(files[lang] for lang in files if len(texts[lang]) == usual)
    odd = [f"{files[lang]} has {len(lines)}" for lang, lines in texts.items() if len(lines) != usual]
    shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
    raise DataError(f"parallel files differ in line count: {reference} has {usual} lines but {shown}; "
                    f"every language needs one line per sentence, in the same order")
  return texts


def read_text(path: PathLike, lang: str | None = None) -> dict[str, list[str]]:
  """Reads held-out documents per language, for perplexity.

  A ``.jsonl`` file holds {"text", "lang"} records ("lang" may be left out when
  ``lang=`` is given); any other file is plain text, one document a line, in the
  language its name gives up to the first dot ("de.txt", "eng_Latn.devtest"). Blank
  lines are no documents and are skipped; an empty "text" field is an error.

  Args:
    path: a file, or a folder whose ``*.jsonl`` and ``*.txt`` files are all read.
    lang: language of every document; overrides file names and "lang" fields.

  Returns:
    {language: documents}, in file and line order.
  """
  found = _inputs(path, "held-out text", re.compile(r"(?P<lang>[^.]+)(?:\.[^.]+)*\.(?:jsonl|txt)"),
                  "*.jsonl, *.txt", one_per_lang=False)
  docs: dict[str, list[str]] = {}
  for file, _ in found:
    if file.suffix == ".jsonl":
      seen: set[str] = set()
      for lineno, record in _jsonl(file, "held-out text"):
        source = f"{file}:{lineno}"
        text = _text(record, "text", source, "held-out text", ("text", "lang"))
        doc_lang = _record_lang(lang, record.get("lang"), None, source, "held-out text", "lang", seen)
        docs.setdefault(doc_lang, []).append(text)
    else:
      lines = [line for _, line in _lines(file) if line.strip()]
      if not lines:
        raise DataError(f"{file}: no documents (only blank lines); held-out text needs one document a line")
      docs.setdefault(lang or file.name.split(".")[0], []).extend(lines)
  if not docs:
    raise DataError(f"{path}: no documents; a held-out .jsonl needs {{text, lang}} records")
  return docs


TASK_FORMATS: dict[str, Callable[..., Any]] = {
    "xcopa": read_xcopa,
    "xnli": read_xnli,
    "xstorycloze": read_xstorycloze,
    "belebele": read_belebele,
    "mgsm": read_mgsm,
    "flores": read_parallel,
    "perplexity": read_text,
}
MULTIPLE_CHOICE = ("xcopa", "xnli", "xstorycloze", "belebele")
