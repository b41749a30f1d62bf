"""The items of the cross-lingual probes (``crosslingual.py``): ZS-CLT names and CLKA facts in every language.

ZS-CLT: CLDR names (babel, through ``dictionaries.from_cldr``) of countries,
languages, currencies, months and weekdays; an item is the prompt
``"{name}:"`` (rendered as the ``instruction`` record kind renders it,
template plain) and the category label, one of ``ZSCLT_LABELS`` (English
words shared by every language: only the input changes language).

CLKA: synthetic facts ``BORN_IN[lang].format(name=person, place=territory)``
with seeded syllable names (the same string in every language) and CLDR
territory names; a query is the sentence cut before the place, the choices
the place (and the rest of the sentence) for the true territory and seeded
distractors, the same keys in every language.

English-Clone (``qen``) is a target only: its text is ``clone_map.clone`` of
the source text (ZS-CLT: the name, labels as they are; CLKA: prompt and
choices). Every language code goes through ``languages.resolve``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError, DataError

CLONE = "qen"
# ZS-CLT: CLDR category → the label the model answers (one output space for every input language).
ZSCLT_LABELS = {"territory": "country", "language": "language", "currency": "currency", "month": "month",
                "weekday": "weekday"}
ZSCLT_SEPARATOR = ":"  # The prompt is "{name}:" (no word to translate; "→" is byte pieces in small vocabularies).
HELD_OUT_SHARE = 0.2  # ZS-CLT keys per category that are never trained (the "unseen" numbers).
MIN_ITEMS = 30  # Fewest ZS-CLT items a language must name for its accuracy to mean something.
MIN_TERRITORIES = 30  # Fewest territories (named in the source and every target) CLKA draws facts from.
FACT_REPEATS = 4  # Copies of each CLKA fact in the training file: packed rows then hold the facts in new mixes.
# CLKA: "<person> was born in <territory>." per language. The place is CLDR's name as it is (nominative):
# languages that inflect it after the preposition (rus) read a wrong case, the same for every choice.
BORN_IN = {
    "eng": "{name} was born in {place}.",
    "fra": "{name} est né en {place}.",
    "deu": "{name} wurde in {place} geboren.",
    "spa": "{name} nació en {place}.",
    "ita": "{name} è nato in {place}.",
    "por": "{name} nasceu em {place}.",
    "nld": "{name} werd geboren in {place}.",
    "rus": "{name} родился в {place}.",
    "zho": "{name}出生于{place}。",
    "jpn": "{name}は{place}で生まれた。",
    "hin": "{name} का जन्म {place} में हुआ था।",
}
CLDR_HELPERS = ("eng", "fra", "deu", "spa", "rus", "zho")  # Complete CLDR locales (see ``cldr_names``).
# CLDR keys that are not countries / languages / currencies (regions, groupings, unknown, pseudo-locales).
_NOT_COUNTRIES = {"EU", "EZ", "UN", "QO", "XA", "XB", "ZZ"}
_NOT_LANGUAGES = {"und", "zxx", "mul", "mis"}
_NOT_CURRENCIES = {"XXX", "XTS"}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")


@dataclasses.dataclass(frozen=True)
class Query:
  """One multiple-choice item in one language; every choice is scored as a continuation of the prompt."""
  key: str  # What the item asks about, the same in every language ("territory:FR", a CLKA person).
  lang: str
  prompt: str
  choices: tuple[str, ...]
  answer: int  # Index of the right choice.
  # The choice continues the prompt after ``sep`` in one text (CLKA: encoded whole, as trained); None: the
  # prompt and the choice are encoded apart (ZS-CLT: as the instruction record kind encodes them).
  sep: str | None = None
  seen: bool = True  # ZS-CLT: the key's source-language item was trained.
  # The item's own words (ZS-CLT: the name; CLKA: the true territory) are spelled as in the source: a model can
  # answer by copying the string, so ``accuracy_distinct`` leaves these items out.
  identical: bool = False


# ---------------------------------------------------------------- languages and CLDR names

def resolve_languages(source: str, targets: Sequence[str], clone_map) -> tuple[str, list[str]]:
  """(source, [source] + targets) resolved and de-duplicated; qen is a target only and needs a clone map.

  Raises:
    UnknownLanguageError: a code the registry lacks; ConfigError: qen as the source, or without a clone map.
  """
  source = langs.resolve(source)
  if source == CLONE:
    raise ConfigError("--source 'qen' (English-Clone) is a target only: its text is the clone of the source's; "
                      "use a real source language such as en")
  out = [source]
  for code in targets:
    lang = langs.resolve(code)
    if lang == CLONE and clone_map is None:
      raise ConfigError("target 'qen' (English-Clone) needs --clone_dir, the folder `polyglot-jax data clone` "
                        "wrote (manifest.json); pass it or leave qen out of --targets")
    if lang not in out:
      out.append(lang)
  return source, out


def _keep_key(category: str, key: str) -> bool:
  """Countries, languages and currencies only: no regions, groupings, variants or placeholders."""
  if category == "territory":
    return len(key) == 2 and key.isalpha() and key not in _NOT_COUNTRIES
  if category == "language":
    return key.isalpha() and key.islower() and key not in _NOT_LANGUAGES
  if category == "currency":
    return key not in _NOT_CURRENCIES
  return True


def cldr_names(languages: Sequence[str], categories: Sequence[str]) -> dict[str, dict[str, dict[str, str]]]:
  """CLDR names through ``dictionaries.from_cldr``: category → key → {lang: name} (filtered keys only).

  Args:
    languages: canonical codes with a babel locale (one is enough).
    categories: of ``dictionaries.CLDR_CATEGORIES``.

  Returns:
    Nested dicts; a language lacking a key's name is absent from that key's dict.
  """
  from polyglot_jax.data import dictionaries
  wanted = list(languages)
  # from_cldr keeps a key named in two of its languages: with the large CLDR locales always asked for (their
  # words dropped), a language's keys do not depend on which other languages a run names.
  helpers = [lang for lang in CLDR_HELPERS if lang not in wanted]
  groups, _ = dictionaries.from_cldr(wanted + helpers, tuple(categories))
  out: dict[str, dict[str, dict[str, str]]] = {c: {} for c in categories}
  for group in groups:
    category, key = group.extra["category"], group.extra["key"]
    if _keep_key(category, key):
      names = {w.lang: w.text for w in group.words if w.lang in wanted}
      if names:
        out[category][key] = names
  return out


# ---------------------------------------------------------------- ZS-CLT items

def zsclt_prompt(name: str) -> str:
  """The ZS-CLT prompt of a name, rendered as the ``instruction`` record kind renders it (template plain)."""
  from polyglot_jax.data import records
  return records.InstructionKind.render(None, (f"{name}{ZSCLT_SEPARATOR}", "", "-"), "plain")[0]


def zsclt_items(source: str, targets: Sequence[str], *, clone_map=None, seed: int = 0,
                max_items: int = 0) -> tuple[list[dict], dict[str, list[Query]], dict]:
  """ZS-CLT training records and queries: a CLDR name → its category label.

  Keys are the source's names per category, shuffled with ``seed``; ``max_items``
  takes them round-robin over the categories (balanced as far as months and
  weekdays allow); ``HELD_OUT_SHARE`` of each category's keys is held out.
  A name that names two categories in a language is skipped there (counted).

  Args:
    source: the training language (code or alias).
    targets: the query languages; ``qen`` needs ``clone_map``.
    clone_map: a ``clone.CloneMap`` for the qen target.
    seed: the key order and split.
    max_items: keys in all (0: every key).

  Returns:
    (instruction records of the seen source keys, queries per language with the source first,
     {lang: {reason: count}} of skipped keys).

  Raises:
    ConfigError: a bad language; DataError: a language with fewer than ``MIN_ITEMS`` items.
  """
  source, languages = resolve_languages(source, targets, clone_map)
  real = [lang for lang in languages if lang != CLONE]
  names = cldr_names(real, tuple(ZSCLT_LABELS))
  labels = tuple(ZSCLT_LABELS.values())
  rng = np.random.default_rng(seed)
  order = {}
  for category, keys in names.items():
    named = [k for k in keys if source in keys[k]]
    order[category] = [named[i] for i in rng.permutation(len(named))]
  chosen = {c: [] for c in order}
  for i in range(max(len(keys) for keys in order.values())):  # Round-robin over the categories.
    for category, keys in order.items():
      if i < len(keys) and (not max_items or sum(map(len, chosen.values())) < max_items):
        chosen[category].append(keys[i])
  held = {f"{c}:{k}" for c, keys in chosen.items() for k in keys[:math.ceil(len(keys) * HELD_OUT_SHARE)]
          if len(keys) > 1}
  total = sum(map(len, chosen.values()))
  rows: dict[str, list[tuple[str, str, str, bool]]] = {}  # lang → (key, category, text shown, identical).
  skipped: dict[str, dict[str, int]] = {}
  for lang in languages:
    text_lang = source if lang == CLONE else lang
    categories_of: dict[str, set] = {}
    for category, keys in names.items():
      for names_of in keys.values():
        if text_lang in names_of:
          categories_of.setdefault(names_of[text_lang], set()).add(category)
    out, skips = [], {}
    for category, keys in chosen.items():
      for key in keys:
        name = names[category][key].get(text_lang)
        reason = ("no CLDR name" if name is None else
                  "name of two categories" if len(categories_of[name]) > 1 else "")
        if reason:
          skips[reason] = skips.get(reason, 0) + 1
        else:
          out.append((f"{category}:{key}", category, clone_map.clone(name) if lang == CLONE else name,
                      name == names[category][key][source]))
    if len(out) < MIN_ITEMS:
      what = "raise max_items or use 0 (every key)" if lang == source else f"leave '{lang}' out of the targets"
      raise DataError(f"ZS-CLT: language '{lang}' has {len(out)} usable CLDR names of the {total} keys chosen "
                      f"(need {MIN_ITEMS}; skipped {skips}); {what}")
    rows[lang], skipped[lang] = out, skips
  # Seen = trained: the key's source name was usable and not held out.
  trained = {row[0] for row in rows[source] if row[0] not in held}
  queries = {lang: [Query(key, lang, zsclt_prompt(text), labels, labels.index(ZSCLT_LABELS[category]), None,
                          key in trained, same and lang != CLONE) for key, category, text, same in out]
             for lang, out in rows.items()}
  train = [{"instruction": f"{text}{ZSCLT_SEPARATOR}", "output": ZSCLT_LABELS[category], "lang": source}
           for key, category, text, _ in rows[source] if key in trained]
  return train, queries, skipped


# ---------------------------------------------------------------- CLKA items

def person_names(n: int, seed: int = 0) -> list[str]:
  """``n`` distinct synthetic "First Last" names of 2-3 consonant-vowel syllables each, fixed by ``seed``."""
  rng = np.random.default_rng(seed)
  out: list[str] = []
  while len(out) < n:
    parts = ["".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                     for _ in range(int(rng.integers(2, 4)))).capitalize() for _ in range(2)]
    name = " ".join(parts)
    if name not in out:
      out.append(name)
  return out


def _split_template(template: str, name: str, place: str) -> tuple[str, str, str]:
  """(prompt, separator, continuation) of a fact: the prompt ends before the place, the place ends the choice."""
  head, tail = template.split("{place}")
  head = head.format(name=name)
  prompt = head.rstrip()
  return prompt, head[len(prompt):], place + tail


def clka_items(source: str, targets: Sequence[str], *, n_facts: int = 60, n_choices: int = 4, clone_map=None,
               seed: int = 0) -> tuple[list[dict], dict[str, list[Query]]]:
  """CLKA training sentences and queries: synthetic "<person> was born in <territory>." facts.

  Territories are CLDR countries named in the source and every real target,
  with a name of their own in each (no two keys spelled alike). Each fact
  draws its territory, ``n_choices - 1`` distractors and the true answer's
  position with ``seed``: the same keys in every language. A query in T is
  the fact's sentence in ``BORN_IN[T]`` cut before the place; qen's is the
  clone of the source's prompt and choices.

  Args:
    source: the training language (needs a ``BORN_IN`` sentence).
    targets: query languages (each needs one; qen needs ``clone_map``).
    n_facts: facts (persons).
    n_choices: choices per query (at least 2).
    clone_map: a ``clone.CloneMap`` for the qen target.
    seed: names, territories, distractors and answer positions.

  Returns:
    (text records: each fact's source sentence ``FACT_REPEATS`` times, queries per language, source first).

  Raises:
    ConfigError: a bad language or count; DataError: fewer than ``MIN_TERRITORIES`` usable territories.
  """
  source, languages = resolve_languages(source, targets, clone_map)
  if n_choices < 2 or n_facts < 1:
    raise ConfigError(f"CLKA needs n_choices >= 2 and n_facts >= 1; got n_choices={n_choices}, n_facts={n_facts}")
  real = [lang for lang in languages if lang != CLONE]
  for lang in real:
    if lang not in BORN_IN:
      raise ConfigError(f"CLKA has no 'was born in' sentence for language '{lang}'; languages with one: "
                        f"{', '.join(sorted(BORN_IN))} (add it to crosslingual.BORN_IN or leave '{lang}' out)")
  territories = cldr_names(real, ("territory",))["territory"]
  pool = [k for k, v in territories.items() if all(lang in v for lang in real)]
  for lang in real:  # Choices must read differently: drop keys whose name another key also has.
    spelled = [territories[k][lang] for k in pool]
    pool = [k for k in pool if spelled.count(territories[k][lang]) == 1]
  if len(pool) < max(MIN_TERRITORIES, n_choices):
    counts = {lang: sum(lang in v for v in territories.values()) for lang in real}
    worst = min(counts, key=counts.get)
    raise DataError(f"CLKA: only {len(pool)} CLDR territories are named in every language of {real} (need "
                    f"{max(MIN_TERRITORIES, n_choices)}); '{worst}' names {counts[worst]}: leave it out of the targets")
  rng = np.random.default_rng(seed)
  persons = person_names(n_facts, seed)
  facts = []
  for person in persons:
    true = pool[rng.integers(len(pool))]
    others = [k for k in pool if k != true]
    keys = [others[i] for i in rng.choice(len(others), n_choices - 1, replace=False)]
    answer = int(rng.integers(n_choices))
    keys.insert(answer, true)
    facts.append((person, tuple(keys), answer))
  queries: dict[str, list[Query]] = {}
  for lang in languages:
    text_lang = source if lang == CLONE else lang
    out = []
    for person, keys, answer in facts:
      parts = [_split_template(BORN_IN[text_lang], person, territories[k][text_lang]) for k in keys]
      prompt, sep = parts[0][:2]
      choices = tuple(p[2] for p in parts)
      if lang == CLONE:
        prompt, choices = clone_map.clone(prompt), tuple(clone_map.clone(c) for c in choices)
      same = lang != CLONE and territories[keys[answer]][text_lang] == territories[keys[answer]][source]
      out.append(Query(person, lang, prompt, choices, answer, sep, True, same))
    queries[lang] = out
  train = [{"text": BORN_IN[source].format(name=person, place=territories[keys[answer]][source]), "lang": source}
           for _ in range(FACT_REPEATS) for person, keys, answer in facts]
  return train, queries
