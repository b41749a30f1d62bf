"""Document files for the streaming backends: indexed once, read by position.

Formats: ``.jsonl`` (a {"text", "lang"} record per line) and ``.arrayrecord``
(each record the same JSON, UTF-8). Files come either mixed (``lang`` in
every record, ``data.train_files``) or per language (``data.language_files``,
where a record may omit ``lang``). Indexing validates every record once —
rejected ones are counted with the file and line/record number of the first
of each reason — and keeps, per language, where each good document lives
(file id + byte offset or record number). A ``DocReader`` then serves
documents by index, which is what grain's random-access datasets need.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.data.jsonl import DataError, expand_files, log_rejected, parse_record

ARRAY_RECORD_SUFFIXES = (".arrayrecord", ".array_record")


@dataclasses.dataclass
class LanguageIndex:
  """Where one language's documents are: ``files[file_ids[i]]`` at ``keys[i]``."""
  files: list[str]
  file_ids: np.ndarray  # int32
  keys: np.ndarray  # int64: byte offset (jsonl) or record number (arrayrecord)
  text_bytes: int  # UTF-8 bytes of all its texts: the language's size before tokenizing.

  def __len__(self) -> int:
    return len(self.keys)


def is_array_record(path: str) -> bool:
  return path.endswith(ARRAY_RECORD_SUFFIXES)


def iter_file_records(path: str) -> Iterator[tuple[int, int, bytes]]:
  """(line or record number from 1, key, raw bytes) of every record of one file."""
  if is_array_record(path):
    from array_record.python.array_record_module import ArrayRecordReader
    reader = ArrayRecordReader(path, "readahead_buffer_size:0")
    try:
      n = reader.num_records()
      for start in range(0, n, 1024):
        for i, raw in enumerate(reader.read(list(range(start, min(n, start + 1024))))):
          yield start + i + 1, start + i, raw
    finally:
      reader.close()
    return
  try:
    handle = open(path, "rb")
  except OSError as e:
    raise DataError(f"cannot read corpus file '{path}': {e.strerror}; check the path and permissions") from None
  with handle:
    offset = 0
    for lineno, raw in enumerate(handle, 1):
      if raw.strip():
        yield lineno, offset, raw
      offset += len(raw)


def index_documents(train_files: Sequence[str], language_files: Sequence, what: str,
                    languages: Sequence[str] = ()) -> tuple[dict[str, LanguageIndex], Counter]:
  """Validates every record and indexes the good ones by language.

  Args:
    train_files: glob patterns of mixed-language files.
    language_files: ((language code, glob pattern), ...) of single-language files.
    what: config key named in errors (e.g. "config.data.train_files").
    languages: if given, only these languages are kept; a record in another
      language is rejected and counted.

  Returns:
    (language → LanguageIndex, Counter of rejection reasons).
  """
  keep = set(languages)
  jobs: list[tuple[str, str | None]] = [(f, None) for f in expand_files(train_files, what)] if train_files else []
  for item in language_files:
    if len(item) != 2:
      raise DataError(f"{what.replace('train_files', 'language_files')}: {item!r} is not a (language, pattern) pair")
    code = langs.resolve(item[0])
    jobs.extend((f, code) for f in expand_files([item[1]], f"language_files entry for '{code}'"))
  files: list[str] = []
  per_lang: dict[str, tuple[list[int], list[int], list[int]]] = {}
  rejected: Counter = Counter()
  first_bad: dict[str, str] = {}
  for path, default_lang in jobs:
    file_id = len(files)
    files.append(os.path.abspath(path))
    for number, key, raw in iter_file_records(path):
      parsed = parse_record(raw, default_lang)
      if not isinstance(parsed, str) and keep and parsed[1] not in keep:
        parsed = f"language '{parsed[1]}' not in config.data.languages"
      if isinstance(parsed, str):
        rejected[parsed] += 1
        first_bad.setdefault(parsed, f"{path}:{number}")
        continue
      text, lang = parsed
      ids, keys, sizes = per_lang.setdefault(lang, ([], [], []))
      ids.append(file_id)
      keys.append(key)
      sizes.append(len(text.encode("utf-8")))
  log_rejected(rejected, first_bad)
  index = {lang: LanguageIndex(files, np.asarray(ids, np.int32), np.asarray(keys, np.int64), int(sum(sizes)))
           for lang, (ids, keys, sizes) in per_lang.items()}
  return index, rejected


class DocReader:
  """Random access to one language's documents (a grain RandomAccessDataSource).

  Opens files lazily, per process and per thread: grain reads with several
  threads, and a shared handle's seek + readline would interleave between
  them. It pickles into grain's worker processes without open handles.
  """

  def __init__(self, index: LanguageIndex, lang: str):
    self.index = index
    self.lang = lang
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> str:
    file_id, key = int(self.index.file_ids[i]), int(self.index.keys[i])
    path = self.index.files[file_id]
    handles = self._local.__dict__.setdefault("handles", {})
    handle = handles.get(file_id)
    if handle is None:
      if is_array_record(path):
        from array_record.python.array_record_module import ArrayRecordReader
        handle = ArrayRecordReader(path, "readahead_buffer_size:0")
      else:
        handle = open(path, "rb")
      handles[file_id] = handle
    if is_array_record(path):
      raw = handle.read([key])[0]
    else:
      handle.seek(key)
      raw = handle.readline()
    parsed = parse_record(raw, self.lang)
    if isinstance(parsed, str):  # Validated when indexed: the file changed since.
      raise DataError(f"{path}: the record at {key} no longer parses ({parsed}); the file changed under a running job")
    return parsed[0]

  def __getstate__(self):
    return {"index": self.index, "lang": self.lang}

  def __setstate__(self, state):
    self.__init__(state["index"], state["lang"])

  def __repr__(self) -> str:
    return f"DocReader({self.lang}, {len(self)} documents)"


def write_array_record(path: str, records: Sequence[dict]) -> None:
  """Writes {"text", "lang"} records as an ArrayRecord file (one JSON record each)."""
  import json
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(path, "group_size:1")
  try:
    for record in records:
      writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
  finally:
    writer.close()


def estimate_tokens(texts_by_lang: dict[str, list[str]], docs_by_lang: dict[str, int], processor) -> dict[str, dict]:
  """Per language: tokens per document (with its end token) on a sample, and the total it implies.

  Mixture rates are shares of tokens, while the streaming backends pick
  documents: a language's document weight is its token rate divided by its
  mean document length, so that tokens (not documents) follow the rates.
  """
  out = {}
  for lang, texts in texts_by_lang.items():
    if not texts:
      raise DataError(f"language '{lang}' has no documents to sample; remove it from config.data.languages")
    lengths = [len(ids) + 1 for ids in processor.encode(texts)]
    mean = float(np.mean(lengths))
    out[lang] = {"tokens_per_doc": mean, "tokens": mean * docs_by_lang[lang], "docs": docs_by_lang[lang]}
  return out
