"""Bilingual and multi-way word dictionaries for PreAlign (cross-lingual alignment before pretraining).

Sources: CLDR names shipped in babel (``from_cldr``), MUSE bilingual files
(``read_muse``), user TSV tables (``read_tsv``) and our own JSONL
(``read_jsonl``). Entries are ``Pair`` (the ``word_pairs`` record kind of
data/records.py) or ``Group`` (``word_groups``); ``write_jsonl`` writes them
for training. Every language code goes through ``languages.resolve``.

Nothing is dropped silently: a ``Report`` counts every rejected line, cell or
word by reason with the first file:line of each, and every deliberate skip
(a key a CLDR locale lacks, a language not asked for) apart from the rejects.
A language the caller configured that ends with no usable word pair is a
DataError (``require_languages``). See docs/dictionaries.md.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Iterable, Sequence

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError, DataError

CLDR_CATEGORIES = ("territory", "language", "script", "currency", "month", "weekday")
SOURCES = ("cldr", "muse", "tsv", "jsonl")
FORMATS = ("pairs", "groups")
# The natural output format of each source (``build``'s default).
SOURCE_FORMATS = {"cldr": "groups", "muse": "pairs", "tsv": "groups", "jsonl": ""}
# babel's day keys are 0 = Monday; CLDR's own keys are these.
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Rejection reasons (bad input); a reason's first example says where and what.
UNKNOWN_LANGUAGE = "unknown language"
EMPTY_WORD = "empty word"
WRONG_COLUMNS = "wrong number of columns"
NOT_UTF8 = "not UTF-8 text"
TOKENIZER_EMPTY = "word the tokenizer maps to nothing"
TOO_FEW_WORDS = "fewer than 2 words left"


@dataclasses.dataclass(frozen=True)
class Word:
  text: str
  lang: str  # ISO 639-3 (languages.resolve).
  ids: tuple[int, ...] | None = dataclasses.field(default=None, compare=False)  # Token span (tokenize_words).


@dataclasses.dataclass
class Pair:
  """One translation pair (the ``word_pairs`` record kind); ``extra`` keys are written alongside."""
  src: Word
  tgt: Word
  extra: dict = dataclasses.field(default_factory=dict)
  where: str = dataclasses.field(default="", compare=False)  # file:line it came from.

  @property
  def words(self) -> tuple[Word, ...]:
    return (self.src, self.tgt)


@dataclasses.dataclass
class Group:
  """Translations of one concept (the ``word_groups`` record kind); ``extra`` e.g. CLDR category and key."""
  words: tuple[Word, ...]
  extra: dict = dataclasses.field(default_factory=dict)
  where: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass
class Report:
  """Entries kept; bad input rejected and entries skipped on purpose, by reason with the first example."""
  kept: int = 0
  rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skip_examples: dict = dataclasses.field(default_factory=dict)

  def reject(self, reason: str, where: str, detail: str = "") -> None:
    self.rejected[reason] += 1
    self.examples.setdefault(reason, f"{where} ({detail})" if detail else where)

  def skip(self, reason: str, where: str) -> None:
    self.skipped[reason] += 1
    self.skip_examples.setdefault(reason, where)


def format_report(report: Report, what: str = "entries") -> str:
  """The kept count, then every rejection and skip reason with its count and first example."""
  lines = [f"kept {report.kept} {what}"]
  for title, counts, examples in (("rejected (bad input)", report.rejected, report.examples),
                                  ("skipped (not errors)", report.skipped, report.skip_examples)):
    lines.append(f"{title}: {sum(counts.values()) or 'none'}")
    for reason, n in counts.most_common():
      lines.append(f"  {n:>7}  {reason}; first at {examples[reason]}")
  return "\n".join(lines)


def _resolve_all(codes: Iterable[str]) -> list[str]:
  """Canonical codes, first occurrence kept (``en`` and ``eng`` are one language)."""
  out = []
  for code in codes:
    lang = langs.resolve(code)
    if lang not in out:
      out.append(lang)
  return out


# ---------------------------------------------------------------- CLDR (babel)

def babel_locale(code: str) -> str:
  """The babel locale of a language: its 2-letter alias where babel has one, else another alias or the code.

  Raises:
    ConfigError: babel ships no CLDR locale for the language.
  """
  import babel
  from babel import localedata
  language = langs.get(code)
  candidates = list(dict.fromkeys(language.aliases + (language.code,)))  # The TFDS (mostly 2-letter) alias first.
  for candidate in candidates:
    if localedata.exists(candidate):
      return candidate
  raise ConfigError(f"language '{language.code}' ({language.name}) has no CLDR locale in babel {babel.__version__} "
                    f"(tried {candidates}); leave it out of the languages or give its words with --source tsv")


def _cldr_names(locale, category: str) -> dict[str, str]:
  """Key → name of one CLDR category as babel gives it (root's placeholders such as 'M01' included)."""
  if category == "territory":
    return dict(locale.territories)
  if category == "language":
    return dict(locale.languages)
  if category == "script":
    return dict(locale.scripts)
  if category == "currency":
    return dict(locale.currencies)
  if category == "month":
    return {str(k): v for k, v in locale.months["format"]["wide"].items()}
  return {_WEEKDAYS[k]: v for k, v in locale.days["format"]["wide"].items()}


def from_cldr(languages: Sequence[str], categories: Sequence[str] = CLDR_CATEGORIES,
              report: Report | None = None) -> tuple[list[Group], Report]:
  """Multi-way groups of CLDR names (babel's locale data), aligned across locales by their CLDR key.

  Each key of a category (territory "FR", month "1" wide format, weekday
  "mon", ...) gives one group with its name in every requested language that
  has it (text as CLDR writes it: French months are lowercase); a language
  lacking the key is skipped and counted, a key named in fewer than two
  languages gives no group.

  Args:
    languages: language codes or aliases (at least two).
    categories: of ``CLDR_CATEGORIES``.
    report: a report to add to (a new one by default).

  Returns:
    (groups with extra {"category", "key"}, report).

  Raises:
    ConfigError: an unknown category, fewer than two languages, a language without a babel locale.
    DataError: a language ends with no usable pair (``require_languages``).
  """
  from babel import Locale
  report = report or Report()
  codes = _resolve_all(languages)
  if len(codes) < 2:
    raise ConfigError(f"CLDR groups need at least two languages; got {list(languages)}")
  unknown = [c for c in categories if c not in CLDR_CATEGORIES]
  if unknown:
    raise ConfigError(f"unknown CLDR categories {unknown}; choose from {list(CLDR_CATEGORIES)}")
  locales = {code: Locale.parse(babel_locale(code)) for code in codes}
  root = Locale("root")
  groups = []
  for category in categories:
    names = {code: _cldr_names(loc, category) for code, loc in locales.items()}
    placeholders = _cldr_names(root, category)
    keys = list(dict.fromkeys(k for code in codes for k in names[code]))
    if category == "weekday":
      keys.sort(key=_WEEKDAYS.index)
    elif category != "month":
      keys.sort()
    for key in keys:
      where = f"cldr {category} {key}"
      words = []
      for code in codes:
        text = names[code].get(key)
        if not text or text == placeholders.get(key):  # A locale without the name inherits root's 'M01'.
          report.skip(f"{code}: no CLDR {category} name for the key", where)
        else:
          words.append(Word(text, code))
      if len(words) < 2:
        report.skip(f"CLDR {category} key named in fewer than 2 languages", where)
        continue
      groups.append(Group(tuple(words), {"category": category, "key": key}, where))
  report.kept = len(groups)
  require_languages(groups, codes, "CLDR", report)
  return groups, report


# ---------------------------------------------------------------- MUSE and TSV files

def _lines(path: str, report: Report):
  """(line number, text) of the non-blank lines of a UTF-8 file; undecodable lines are rejected."""
  from polyglot_jax.data.jsonl import iter_lines
  for _, lineno, raw in iter_lines([path], "dictionary file"):
    try:
      line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
      report.reject(NOT_UTF8, f"{path}:{lineno}")
      continue
    yield lineno, line


def muse_languages(path: str, languages: Sequence[str] = ()) -> tuple[str, str]:
  """(source, target) language of a MUSE file: from its name (``en-fr.txt``, ``en-fr.0-5000.txt``) or the two given.

  Raises:
    ConfigError: the name does not say and ``languages`` is not exactly two, or the name's languages are not
      among ``languages``.
  """
  wanted = _resolve_all(languages)
  match = re.match(r"([A-Za-z]{2,3})-([A-Za-z]{2,3})(\.|$)", os.path.basename(path))
  if match:
    try:
      pair = (langs.resolve(match.group(1)), langs.resolve(match.group(2)))
    except langs.UnknownLanguageError:
      pair = None
    if pair and wanted and not set(pair) <= set(wanted):
      raise ConfigError(f"MUSE file '{path}' is {pair[0]}-{pair[1]} by its name, not within --languages "
                        f"{','.join(wanted)}; add the languages or leave the file out")
    if pair:
      return pair
  if len(wanted) == 2:
    return wanted[0], wanted[1]
  raise ConfigError(f"cannot tell the languages of MUSE file '{path}': name it SRC-TGT.txt (MUSE's naming, "
                    "e.g. en-fr.txt) or give exactly two --languages")


def read_muse(path: str, src_lang: str, tgt_lang: str, report: Report | None = None) -> tuple[list[Pair], Report]:
  """Pairs of a MUSE bilingual dictionary: ``src<TAB or space>tgt`` per line.

  A word is on as many lines as it has translations (one-to-many). A line
  with a tab is split at tabs (so an empty side is an empty word), otherwise
  at whitespace. Rejected: a line that is not two columns, an empty word, a
  line that is not UTF-8.

  Args:
    path: the file.
    src_lang, tgt_lang: language codes of the two columns.
    report: a report to add to.

  Returns:
    (pairs, report).

  Raises:
    DataError: the file is unreadable or gives no pair.
  """
  report = report or Report()
  src_lang, tgt_lang = langs.resolve(src_lang), langs.resolve(tgt_lang)
  pairs = []
  for lineno, line in _lines(path, report):
    where = f"{path}:{lineno}"
    cells = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
    if len(cells) != 2:
      report.reject(WRONG_COLUMNS, where, f"{len(cells)} columns, MUSE lines have 2")
    elif not cells[0] or not cells[1]:
      report.reject(EMPTY_WORD, where)
    else:
      pairs.append(Pair(Word(cells[0], src_lang), Word(cells[1], tgt_lang), where=where))
  if not pairs:
    raise DataError(f"MUSE file '{path}' gives no usable {src_lang}-{tgt_lang} pair "
                    f"({sum(report.rejected.values())} lines rejected); check its format: 'src<TAB>tgt' per line")
  report.kept += len(pairs)
  return pairs, report


def read_tsv(path: str, languages: Sequence[str] = (), report: Report | None = None) -> tuple[list[Group], Report]:
  """Groups of a TSV table: a header row of language codes, then one group per row, one column per language.

  An empty cell is a word the group lacks (not an error). Rejected: a header
  column of an unknown language (once, at line 1; its cells are then counted
  under the same reason), a row with another number of cells than the header,
  a row with fewer than two words.

  Args:
    path: the file (UTF-8, tab-separated).
    languages: keep only these languages' columns (all by default); they must each end with a usable pair.
    report: a report to add to.

  Returns:
    (groups, report).

  Raises:
    DataError: unreadable file, no header, or a configured language with no usable pair.
  """
  report = report or Report()
  wanted = _resolve_all(languages)
  lines = _lines(path, report)
  header = next(lines, None)
  if header is None:
    raise DataError(f"TSV dictionary '{path}' is empty; its first line must name a language per column")
  columns: list[str | None] = []  # A language, None (unknown: its cells are rejected) or "" (not asked for).
  for j, code in enumerate(header[1].split("\t"), 1):
    try:
      lang = langs.resolve(code) if code.strip() else None
    except langs.UnknownLanguageError:
      lang = None
    if lang is None:
      report.reject(UNKNOWN_LANGUAGE, f"{path}:{header[0]}", f"column {j}: {code!r}")
    elif wanted and lang not in wanted:
      report.skip(f"column of {lang}, not in the languages asked for", f"{path}:{header[0]} (column {j})")
      lang = ""
    columns.append(lang)
  absent = [lang for lang in wanted if lang not in columns]
  if absent:
    raise DataError(f"TSV dictionary '{path}' has no column for {', '.join(absent)} (its header: {header[1]!r}); "
                    "add a column or leave the language out of --languages")
  groups = []
  for lineno, line in lines:
    where = f"{path}:{lineno}"
    cells = line.split("\t")
    if len(cells) != len(columns):
      report.reject(WRONG_COLUMNS, where, f"{len(cells)} cells, the header has {len(columns)}")
      continue
    words, known = [], 0
    for j, (lang, cell) in enumerate(zip(columns, cells), 1):
      text = cell.strip()
      if lang is None and text:
        report.reject(UNKNOWN_LANGUAGE, where, f"column {j}")
      elif lang is not None and text:
        known += 1
        if lang:
          words.append(Word(text, lang))
    if known < 2:
      report.reject(TOO_FEW_WORDS, where, f"{known} non-empty cell(s) of known languages")
      continue
    if len(words) < 2:
      report.skip("row with fewer than 2 words of the languages asked for", where)
      continue
    groups.append(Group(tuple(words), where=where))
  report.kept += len(groups)
  if wanted:
    require_languages(groups, wanted, f"TSV dictionary '{path}'", report)
  return groups, report


# ---------------------------------------------------------------- JSONL (our records)

_PAIR_KEYS = ("src_text", "tgt_text", "src_lang", "tgt_lang")


def read_jsonl(path: str, report: Report | None = None) -> tuple[list[Pair | Group], Report]:
  """Pairs and groups of a JSONL dictionary, checked by the ``word_pairs`` / ``word_groups`` record kinds.

  Keys beyond the kind's (e.g. "category", "key") come back in ``extra``;
  a word object keeps only "text" and "lang".

  Returns:
    (entries, report); a rejected line is counted with the parser's reason.
  """
  from polyglot_jax.data import records
  report = report or Report()
  entries: list[Pair | Group] = []
  for lineno, line in _lines(path, report):
    where = f"{path}:{lineno}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      report.reject("malformed JSON", where)
      continue
    if not isinstance(record, dict) or not ("words" in record or "src_text" in record):
      report.reject("not a pair or group object", where, "needs 'src_text'... or 'words'")
      continue
    name, keys = ("word_groups", ("words",)) if "words" in record else ("word_pairs", _PAIR_KEYS)
    parsed = records.get_kind(name).parse(record)
    if isinstance(parsed, records.Rejected):
      report.reject(str(parsed), where)
      continue
    words = tuple(Word(text, lang) for text, lang in parsed)
    extra = {k: v for k, v in record.items() if k not in keys}
    entries.append(Group(words, extra, where) if name == "word_groups" else Pair(*words, extra, where))
  report.kept += len(entries)
  return entries, report


def to_record(entry: Pair | Group) -> dict:
  """The JSON object of an entry (``word_pairs`` or ``word_groups`` record kind, plus its extra keys)."""
  if isinstance(entry, Pair):
    record = {"src_text": entry.src.text, "tgt_text": entry.tgt.text, "src_lang": entry.src.lang,
              "tgt_lang": entry.tgt.lang}
  else:
    record = {"words": [{"text": w.text, "lang": w.lang} for w in entry.words]}
  record.update(entry.extra)
  return record


def write_jsonl(entries: Sequence[Pair | Group], path: str) -> int:
  """Writes pairs or groups (one kind per file: a training run reads one record kind); returns the count.

  Raises:
    ConfigError: the entries mix pairs and groups (convert with ``groups_to_pairs`` / ``pairs_to_groups``).
  """
  if len({type(e) for e in entries}) > 1:
    raise ConfigError(f"cannot write '{path}': the entries mix pairs and groups and a run reads one record kind; "
                      "convert them with groups_to_pairs or pairs_to_groups (--format)")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for entry in entries:
      f.write(json.dumps(to_record(entry), ensure_ascii=False) + "\n")
  return len(entries)


# ---------------------------------------------------------------- conversions and filters

def groups_to_pairs(entries: Sequence[Pair | Group]) -> list[Pair]:
  """Every two words of different languages of a group as a pair (in group order); pairs stay as they are."""
  out = []
  for entry in entries:
    if isinstance(entry, Pair):
      out.append(entry)
      continue
    for i, src in enumerate(entry.words):
      out += [Pair(src, tgt, dict(entry.extra), entry.where) for tgt in entry.words[i + 1:] if tgt.lang != src.lang]
  return out


def pairs_to_groups(entries: Sequence[Pair | Group]) -> list[Group]:
  """Connected groups: entries that share a word (same text and language) merge into one group.

  One-to-many MUSE entries chain (bank-banque, bank-rive, rive-shore give one
  group); a merged group keeps the extra keys on which all its entries agree.
  """
  parent: dict[tuple[str, str], tuple[str, str]] = {}

  def find(key):
    while parent[key] != key:
      parent[key] = parent[parent[key]]
      key = parent[key]
    return key

  for entry in entries:
    keys = [(w.text, w.lang) for w in entry.words]
    for key in keys:
      parent.setdefault(key, key)
    for key in keys[1:]:
      parent[find(key)] = find(keys[0])
  members: dict = collections.defaultdict(dict)  # Root → {(text, lang): Word}, in first-seen order.
  merged: dict = collections.defaultdict(list)  # Root → its entries.
  for entry in entries:
    root = find((entry.words[0].text, entry.words[0].lang))
    merged[root].append(entry)
    for w in entry.words:
      members[root].setdefault((w.text, w.lang), Word(w.text, w.lang))
  out = []
  missing = object()
  for root, words in members.items():
    extras = [e.extra for e in merged[root]]
    extra = {k: v for k, v in extras[0].items() if all(x.get(k, missing) == v for x in extras)}
    out.append(Group(tuple(words.values()), extra, merged[root][0].where))
  return out


def select_languages(entries: Sequence[Pair | Group], languages: Sequence[str],
                     report: Report | None = None) -> tuple[list[Pair | Group], Report]:
  """Keeps the words of ``languages``; a group left with fewer than two words, or a pair with one, is skipped."""
  report = report or Report()
  wanted = set(_resolve_all(languages))
  out = []
  for entry in entries:
    words = [w for w in entry.words if w.lang in wanted]
    for w in entry.words:
      if w.lang not in wanted:
        report.skip(f"word in {w.lang}, not in the languages asked for", entry.where)
    if len(words) == len(entry.words):
      out.append(entry)
    elif isinstance(entry, Group) and len(words) >= 2:
      out.append(dataclasses.replace(entry, words=tuple(words)))
    else:
      report.skip("entry left with fewer than 2 words of the languages asked for", entry.where)
  report.kept = len(out)
  return out, report


def language_pairs(entries: Sequence[Pair | Group]) -> collections.Counter:
  """Word pairs per "src-tgt" language pair (a group counts each two words of different languages, in order)."""
  counts: collections.Counter = collections.Counter()
  for entry in entries:
    for i, a in enumerate(entry.words):
      for b in entry.words[i + 1:]:
        if a.lang != b.lang:
          counts[f"{a.lang}-{b.lang}"] += 1
  return counts


def require_languages(entries: Sequence[Pair | Group], languages: Sequence[str], source: str,
                      report: Report | None = None) -> None:
  """Raises a DataError naming the first configured language that has no usable word pair in ``entries``."""
  covered = collections.Counter()
  for pair, n in language_pairs(entries).items():
    for lang in pair.split("-"):
      covered[lang] += n
  asked = _resolve_all(languages)
  missing = [lang for lang in asked if not covered[lang]]
  if missing:
    rejected = ""
    if report is not None and report.rejected:
      reason, _ = report.rejected.most_common(1)[0]
      rejected = (f" ({sum(report.rejected.values())} rejected, most for '{reason}', "
                  f"first at {report.examples[reason]})")
    raise DataError(f"{source}: no usable word pair for language {', '.join(repr(m) for m in missing)} of the "
                    f"languages asked for {','.join(asked)}{rejected}; add {', '.join(missing)} words to the "
                    "dictionary or leave them out of --languages")


# ---------------------------------------------------------------- tokens

def load_processor(path: str):
  """A SentencePieceProcessor; a missing model file is a DataError naming it."""
  import sentencepiece as spm
  if not os.path.isfile(path):
    raise DataError(f"tokenizer model '{path}' does not exist; pass a sentencepiece .model file (--tokenizer)")
  return spm.SentencePieceProcessor(model_file=path)


def maps_to_nothing(ids: Sequence[int], processor) -> bool:
  """True when a word's ids hold no piece but the bare word-start marker and <unk>."""
  unk = processor.unk_id()
  return all(i == unk or processor.id_to_piece(i) == "\u2581" for i in ids)


def tokenize_words(entries: Sequence[Pair | Group], processor,
                   report: Report | None = None) -> tuple[list[Pair | Group], Report]:
  """Gives each word its token span, ``processor.encode(word)`` (word-start marked, as mid-sentence).

  A word the tokenizer maps to nothing (no ids, or only <unk> and the bare
  word-start piece) is rejected; an entry left with fewer than two words
  (any pair that loses one) is rejected too.

  Args:
    entries: pairs and/or groups.
    processor: a sentencepiece.SentencePieceProcessor.
    report: a report to add to.

  Returns:
    (entries whose words carry ``ids``, report).
  """
  report = report or Report()
  out = []
  for entry in entries:
    words = []
    for w in entry.words:
      ids = tuple(processor.encode(w.text))
      if maps_to_nothing(ids, processor):
        report.reject(TOKENIZER_EMPTY, entry.where, f"{w.lang} {w.text!r}")
      else:
        words.append(dataclasses.replace(w, ids=ids))
    if len(words) < 2:  # A pair that lost a word, or a group left with one.
      report.reject(TOO_FEW_WORDS, entry.where, "after tokenisation")
    elif isinstance(entry, Pair):
      out.append(dataclasses.replace(entry, src=words[0], tgt=words[1]))
    else:
      out.append(dataclasses.replace(entry, words=tuple(words)))
  report.kept = len(out)
  return out, report


# ---------------------------------------------------------------- stats

def stats(entries: Sequence[Pair | Group], processor=None) -> dict:
  """Counts and, with a tokenizer, coverage of a dictionary.

  Args:
    entries: pairs and/or groups.
    processor: a SentencePieceProcessor, or None for counts only.

  Returns:
    {"pairs": number of Pair entries, "groups": number of Group entries,
     "languages": {lang: {"words", "unique"[, "single_token", "tokens_per_word", "unknown", "bytes", "empty"]}},
     "language_pairs": {"src-tgt": word pairs}}. Coverage shares are over a
    language's unique words: one token; mean tokens; any <unk>; any byte-fallback piece; maps to nothing.
  """
  words: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for entry in entries:
    for w in entry.words:
      words[w.lang][w.text] += 1
  per_lang = {}
  for lang in sorted(words):
    row = {"words": sum(words[lang].values()), "unique": len(words[lang])}
    if processor is not None:
      encoded = [processor.encode(text) for text in words[lang]]
      n = len(encoded)
      unk = processor.unk_id()
      row.update(
          single_token=sum(len(ids) == 1 for ids in encoded) / n,
          tokens_per_word=sum(len(ids) for ids in encoded) / n,
          unknown=sum(unk in ids for ids in encoded) / n,
          bytes=sum(any(processor.is_byte(i) for i in ids) for ids in encoded) / n,
          empty=sum(maps_to_nothing(ids, processor) for ids in encoded) / n)
    per_lang[lang] = row
  return {"pairs": sum(isinstance(e, Pair) for e in entries), "groups": sum(isinstance(e, Group) for e in entries),
          "languages": per_lang, "language_pairs": dict(sorted(language_pairs(entries).items()))}


def format_stats(report: dict) -> str:
  """A table of ``stats``: per-language words (and coverage), then word pairs per language pair."""
  lines = [f"dictionary: {report['groups']} groups, {report['pairs']} pairs"]
  coverage = any("single_token" in row for row in report["languages"].values())
  head = f"{'lang':<6} {'words':>8} {'unique':>8}"
  if coverage:
    head += f" {'1-token':>8} {'tok/word':>8} {'unk':>6} {'bytes':>6} {'empty':>6}"
  lines.append(head)
  for lang, row in report["languages"].items():
    line = f"{lang:<6} {row['words']:>8,} {row['unique']:>8,}"
    if coverage:
      line += (f" {row['single_token']:>8.1%} {row['tokens_per_word']:>8.2f} {row['unknown']:>6.1%}"
               f" {row['bytes']:>6.1%} {row['empty']:>6.1%}")
    lines.append(line)
  lines.append("word pairs per language pair:")
  lines += [f"  {pair:<9} {n:>8,}" for pair, n in report["language_pairs"].items()] or ["  none"]
  return "\n".join(lines)


# ---------------------------------------------------------------- build (the CLI's library half)

def build(source: str, inputs: Sequence[str] = (), languages: Sequence[str] = (),
          categories: Sequence[str] | None = None, processor=None,
          output_format: str | None = None) -> tuple[list[Pair | Group], Report]:
  """Reads a dictionary from one source, keeps ``languages``, tokenises (optional) and converts it.

  Args:
    source: cldr | muse | tsv | jsonl.
    inputs: files or globs (muse, tsv, jsonl); none for cldr.
    languages: language codes; required for cldr, optional otherwise (each must end with a usable pair).
    categories: CLDR categories (all by default).
    processor: a SentencePieceProcessor: words it maps to nothing are rejected.
    output_format: pairs | groups (default: the source's own; jsonl keeps each entry's).

  Returns:
    (entries, report).

  Raises:
    ConfigError: a bad source, format or file list; DataError: unusable input (``require_languages``).
  """
  if source not in SOURCES:
    raise ConfigError(f"--source '{source}' is unknown; sources: {list(SOURCES)}")
  output_format = output_format or SOURCE_FORMATS[source]
  if output_format and output_format not in FORMATS:
    raise ConfigError(f"--format '{output_format}' is unknown; formats: {list(FORMATS)}")
  if (source == "cldr") == bool(inputs):
    raise ConfigError("--source cldr reads babel's CLDR data and takes no --input" if inputs else
                      f"--source {source} needs --input FILE (repeatable)")
  from polyglot_jax.data.jsonl import expand_files
  wanted = _resolve_all(languages)
  report = Report()
  entries: list = []
  inputs = expand_files(inputs, "--input") if inputs else []
  if source == "cldr":
    entries, report = from_cldr(wanted, tuple(categories or CLDR_CATEGORIES), report)
  for path in inputs:
    if source == "muse":
      got, report = read_muse(path, *muse_languages(path, wanted), report)
    elif source == "tsv":
      got, report = read_tsv(path, (), report)
    else:
      got, report = read_jsonl(path, report)
    entries += got
  if wanted and source in ("tsv", "jsonl"):
    entries, report = select_languages(entries, wanted, report)
  if processor is not None:
    entries, report = tokenize_words(entries, processor, report)
  if wanted:
    require_languages(entries, wanted, f"dictionary from --source {source}", report)
  if output_format == "pairs":
    entries = groups_to_pairs(entries)
  elif output_format == "groups":
    entries = pairs_to_groups(entries) if any(isinstance(e, Pair) for e in entries) else entries
  report.kept = len(entries)
  return entries, report
