"""The offline demo corpus: real human translations shipped inside PyPI packages.

Two sources, both installed with the project and both parallel across
languages, so that held-out text says the same thing in every language:

- Django's gettext catalogs (``django/**/locale/<ll>/LC_MESSAGES/*.po``): the
  framework's messages translated by people into ~100 locales; English is
  the ``msgid`` side.
- Unicode CLDR data in ``babel``: names of territories, languages, scripts,
  currencies, time zones, months and weekdays in each locale.

A message is held out (in every language at once) when a hash of its English
text falls in the held-out bucket, so no held-out sentence has a translation
in the training data of another language. Within a language, lines are
de-duplicated, and a training line identical to a held-out line (two English
messages with one translation) is dropped from training.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import zlib
from collections import defaultdict

# Django locale → registry code. 13 languages in 10 scripts.
DEMO_LOCALES = {
    "en": "eng", "de": "deu", "fr": "fra", "es": "spa", "ru": "rus", "el": "ell", "ar": "ara",
    "he": "heb", "hi": "hin", "zh_Hans": "zho", "ja": "jpn", "ko": "kor", "th": "tha",
}
HELD_OUT_BUCKETS = 10  # One bucket in ten is held out.
MESSAGES_PER_DOC = 6


def _held_out(key: str) -> bool:
  return zlib.crc32(key.encode("utf-8")) % HELD_OUT_BUCKETS == 0


def _django_messages(locale: str) -> list[tuple[str, str]]:
  """(english key, text in locale) for every translated Django message."""
  import django
  import polib
  root = os.path.dirname(django.__file__)
  out = []
  if locale == "en":
    # English has no translations of its own: its text is the msgid side of
    # the German catalogs (any complete catalog has the same keys).
    for path in sorted(glob.glob(f"{root}/**/locale/de/LC_MESSAGES/*.po", recursive=True)):
      for entry in polib.pofile(path):
        if entry.msgid and not entry.obsolete:
          out.append((entry.msgid, entry.msgid))
    return out
  for path in sorted(glob.glob(f"{root}/**/locale/{locale}/LC_MESSAGES/*.po", recursive=True)):
    for entry in polib.pofile(path):
      if entry.obsolete or entry.fuzzy:
        continue
      text = entry.msgstr or (entry.msgstr_plural.get(0, "") if entry.msgstr_plural else "")
      if text:
        out.append((entry.msgid, text))
  return out


def _cldr_tables(loc) -> dict[str, str]:
  """Flat CLDR id → localized name: territories, languages, scripts, currencies, zones, dates."""
  out = {}
  for table_name in ("territories", "languages", "scripts", "currencies"):
    for key, name in getattr(loc, table_name).items():
      out[f"{table_name}:{key}"] = name
  for zone, names in loc.meta_zones.items():
    for kind, name in names.get("long", {}).items():
      out[f"zone:{zone}:{kind}"] = name
  for key, name in loc.months["format"]["wide"].items():
    out[f"month:{key}"] = name
  for key, name in loc.days["format"]["wide"].items():
    out[f"day:{key}"] = name
  return out


def _cldr_messages(locale: str) -> list[tuple[str, str]]:
  """(English name, localized name) pairs from CLDR, in a fixed order."""
  import babel
  english = _cldr_tables(babel.Locale.parse("en"))
  local = _cldr_tables(babel.Locale.parse(locale))
  return [(english[key], local[key]) for key in sorted(local) if key in english]


def build_demo_corpus(out_dir: str) -> dict:
  """Writes train.jsonl and eval.jsonl of {"text", "lang"} under ``out_dir``.

  Also writes parallel.jsonl: held-out messages present in every demo
  language, as {"id", "lang", "text"} (the input of ``tokenizer report``).

  Returns:
    stats: per language, documents and characters in train and eval.
  """
  os.makedirs(out_dir, exist_ok=True)
  stats: dict = defaultdict(lambda: {"train_docs": 0, "train_chars": 0, "eval_docs": 0, "eval_chars": 0})
  train_path, eval_path = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "eval.jsonl")
  held_out_by_key: dict[str, dict[str, str]] = defaultdict(dict)
  with open(train_path + ".tmp", "w", encoding="utf-8") as train_f, \
       open(eval_path + ".tmp", "w", encoding="utf-8") as eval_f:
    for locale, code in DEMO_LOCALES.items():
      cldr_locale = locale.replace("zh_Hans", "zh_Hans_CN")
      messages = _django_messages(locale) + _cldr_messages(cldr_locale)
      split = {"train": [], "eval": []}
      seen = {"train": set(), "eval": set()}
      for key, text in messages:
        text = " ".join(text.split())
        name = "eval" if _held_out(key) else "train"
        if name == "eval" and text:
          held_out_by_key[key].setdefault(code, text)
        if text and text not in seen[name]:
          seen[name].add(text)
          split[name].append(text)
      split["train"] = [t for t in split["train"] if t not in seen["eval"]]
      for name, handle in (("train", train_f), ("eval", eval_f)):
        texts = split[name]
        for start in range(0, len(texts), MESSAGES_PER_DOC):
          doc = "\n".join(texts[start:start + MESSAGES_PER_DOC])
          handle.write(json.dumps({"text": doc, "lang": code}, ensure_ascii=False) + "\n")
          stats[code][f"{name}_docs"] += 1
          stats[code][f"{name}_chars"] += len(doc)
  with open(os.path.join(out_dir, "parallel.jsonl"), "w", encoding="utf-8") as f:
    for key, texts in sorted(held_out_by_key.items()):
      if len(texts) == len(DEMO_LOCALES):
        key_id = f"{zlib.crc32(key.encode('utf-8')):08x}"
        for code, text in sorted(texts.items()):
          f.write(json.dumps({"id": key_id, "lang": code, "text": text}, ensure_ascii=False) + "\n")
  os.replace(train_path + ".tmp", train_path)
  os.replace(eval_path + ".tmp", eval_path)
  stats = dict(stats)
  with open(os.path.join(out_dir, "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  logging.info("demo corpus: %d languages, %d training characters", len(stats),
               sum(s["train_chars"] for s in stats.values()))
  return stats
