"""Reading JSONL files: globs, lines with their file:line, and text records.

Every rejected record is counted by reason and the first of each reason is
reported with its file:line (``log_rejected``); nothing is dropped silently.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from typing import Iterator, Sequence

from polyglot_jax.errors import DataError  # noqa: F401  (re-exported)


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
  files: list[str] = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern))
    if not matched:
      raise DataError(f"{what}: '{pattern}' matches no file; check the path")
    files.extend(matched)
  return files


def iter_lines(paths: Sequence[str], what: str = "corpus file") -> Iterator[tuple[str, int, bytes]]:
  """(path, line number, raw bytes) of every non-blank line; an unreadable file is a DataError naming ``what``."""
  for path in paths:
    try:
      handle = open(path, "rb")
    except OSError as e:
      raise DataError(f"cannot read {what} '{path}': {e.strerror}; check the path and permissions") from None
    with handle:
      for lineno, raw in enumerate(handle, 1):
        if raw.strip():
          yield path, lineno, raw


def json_objects(path: str, what: str, flag: str = "--input") -> Iterator[tuple[int, dict]]:
  """(line number, object) of every non-blank line of a JSONL file, strictly.

  For command inputs where a bad line is the user's to fix (unlike the corpus
  readers, which count and skip): a missing file, a line that is not JSON and a
  line that is not an object are each a one-line DataError naming the flag or
  the file:line.

  Args:
    path: the JSONL file.
    what: what one record is, for the messages (e.g. ``{"text", "lang"}``).
    flag: the command-line flag that named the file.

  Returns:
    An iterator of (1-based line number, dict).
  """
  if not os.path.isfile(path):
    raise DataError(f"{flag} '{path}' does not exist; give a JSONL file of {what} records")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg}); one {what} record per line") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: not a JSON object; one {what} record per line")
      yield lineno, record


def read_jsonl(paths: Sequence[str]) -> tuple[list[tuple[str, str]], Counter]:
  """Reads {"text", "lang"} records; malformed lines are counted, not dropped silently.

  The ``text`` record kind of ``data/records.py`` (one parser for every reader).

  Returns:
    (list of (text, canonical language code), Counter of rejection reasons).
  """
  from polyglot_jax.data import records
  return records.read_records(paths, "text")


def log_rejected(rejected: Counter, first_bad: dict[str, str]) -> None:
  for reason, count in rejected.items():
    logging.warning("rejected %d records (%s); first at %s", count, reason, first_bad[reason])
