"""Reading JSONL files: globs, lines with their file:line, and text records.

Every rejected record is counted by reason and the first of each reason is
reported with its file:line (``log_rejected``); nothing is dropped silently.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from typing import Iterator, Sequence

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import DataError  # noqa: F401  (re-exported)




def expand_files(patterns: Sequence[str], what: str) -> list[str]:
  files: list[str] = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern))
    if not matched:
      raise DataError(f"{what}: '{pattern}' matches no file; check the path")
    files.extend(matched)
  return files


def iter_lines(paths: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
  """(path, line number, raw bytes) of every non-blank line; an unreadable file is a DataError."""
  for path in paths:
    try:
      handle = open(path, "rb")
    except OSError as e:
      raise DataError(f"cannot read corpus file '{path}': {e.strerror}; check the path and permissions") from None
    with handle:
      for lineno, raw in enumerate(handle, 1):
        if raw.strip():
          yield path, lineno, raw


def parse_record(raw: bytes, default_lang: str | None = None) -> tuple[str, str] | str:
  """One {"text", "lang"} record from raw bytes.

  Returns:
    (text, canonical language code), or the reason the record is rejected.
    ``default_lang`` is the language of a per-language file; a record there
    may omit "lang" but must not name another language.
  """
  try:
    record = json.loads(raw.decode("utf-8"))
    text = record["text"]
    lang = record.get("lang", default_lang) if default_lang else record["lang"]
  except UnicodeDecodeError:
    return "invalid UTF-8"
  except json.JSONDecodeError:
    return "malformed JSON"
  except (KeyError, TypeError, AttributeError):
    return "missing 'text' or 'lang' field"
  if not isinstance(text, str) or not text:
    return "empty or non-string text"
  try:
    lang = langs.resolve(lang)
  except (langs.UnknownLanguageError, TypeError, AttributeError):
    return f"unknown language {lang!r}"
  if default_lang and lang != default_lang:
    return f"lang '{lang}' in a file of language '{default_lang}'"
  return text, lang


def read_jsonl(paths: Sequence[str]) -> tuple[list[tuple[str, str]], Counter]:
  """Reads {"text", "lang"} records; malformed lines are counted, not dropped silently.

  Returns:
    (list of (text, canonical language code), Counter of rejection reasons).
  """
  records: list[tuple[str, str]] = []
  rejected: Counter = Counter()
  first_bad: dict[str, str] = {}
  for path, lineno, raw in iter_lines(paths):
    parsed = parse_record(raw)
    if isinstance(parsed, str):
      rejected[parsed] += 1
      first_bad.setdefault(parsed, f"{path}:{lineno}")
      continue
    records.append(parsed)
  log_rejected(rejected, first_bad)
  return records, rejected


def log_rejected(rejected: Counter, first_bad: dict[str, str]) -> None:
  for reason, count in rejected.items():
    logging.warning("rejected %d records (%s); first at %s", count, reason, first_bad[reason])
