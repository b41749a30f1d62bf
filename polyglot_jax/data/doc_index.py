"""Document files for the streaming backends: indexed once, read by position.

Formats: ``.jsonl`` (a {"text", "lang"} record per line) and ``.arrayrecord``
(each record the same JSON, UTF-8). Files come either mixed (``lang`` in
every record, ``data.train_files``) or per language (``data.language_files``,
where a record may omit ``lang``). Indexing validates every record once —
rejected ones are counted with the file and line/record number of the first
of each reason — and keeps, per language, where each good document lives
(file id + byte offset or record number). A ``DocReader`` then serves
documents by index, which is what grain's random-access datasets need.

Start-up is O(files), not O(records), after the first: each file's index
(every good record's key, language and text size, and its rejection counts
with the first line of each reason) is kept in ``.polyglot_index/<name>[.<lang>].npz``
beside the file — or under the user's cache directory where the data's is
read-only — and reused while the file's size and mtime are unchanged. Files
without a valid cache are indexed in parallel worker processes when there is
enough to read. The ``languages`` filter is applied after loading, so one
cache serves every filter.
"""

from __future__ import annotations

import array
import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import tempfile
import threading
import time
import zipfile
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.data.jsonl import DataError, expand_files, log_rejected

ARRAY_RECORD_SUFFIXES = (".arrayrecord", ".array_record")

# Bumped whenever what a cache file holds, or how records are validated, changes:
# an index built by other code must not be trusted.
INDEX_VERSION = 2
# Beside each data file; hidden, so the data's own globs ("data/*") never match it.
INDEX_DIR = ".polyglot_index"
# Files are indexed in worker processes only when at least this many bytes need
# it (~1 s of reading on one core): below that, starting them (~0.4 s) costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20
# Number of indexing processes (default: the usable cores; 1: index in this process).
WORKERS_ENV = "POLYGLOT_JAX_INDEX_WORKERS"
# A file modified this close to its index being written could change again within
# the same mtime tick (coarse on some filesystems) and keep its size, unseen by
# the (size, mtime) check; such an index is not kept, and the next start re-indexes.
RACY_NS = 2_000_000_000

_logged: set[str] = set()


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


def parse_any(raw: bytes, default_lang: str | None, kind: str, path: str, number: int):
  """(content, language) of one raw record of ``kind``, or the reason it is rejected (a str).

  Records are checked by their kind's parser (``records.parse_raw``); a record
  of another kind is a DataError naming ``path:number``.
  """
  from polyglot_jax.data import records
  return records.parse_raw(raw, kind, default_lang, f"{path}:{number}")


def content_bytes(content) -> int:
  """UTF-8 bytes of the text in a record's content (a language's size before tokenizing)."""
  if isinstance(content, str):
    return len(content.encode("utf-8"))
  if isinstance(content, (list, tuple)):
    return sum(content_bytes(c) for c in content)
  return 0


@dataclasses.dataclass
class FileIndex:
  """One file indexed on its own, before any language filter: what the cache holds.

  Languages and reasons are in the order of their first record in the file.
  """
  keys: np.ndarray  # int64 per good record: byte offset (jsonl) or record number (arrayrecord)
  lang_ids: np.ndarray  # uint16 per good record: its language's position in ``langs``
  text_bytes: np.ndarray  # int64 per good record: UTF-8 bytes of its text
  langs: tuple[str, ...]  # canonical language codes
  lang_first: tuple[int, ...]  # line/record number of each language's first good record
  reasons: tuple[str, ...]  # rejection reasons
  reason_counts: tuple[int, ...]
  reason_first: tuple[int, ...]  # line/record number of each reason's first record


def index_file(path: str, default_lang: str | None = None, kind: str = "text") -> FileIndex:
  """Reads and validates every record of one file.

  Args:
    path: a .jsonl or ArrayRecord file.
    default_lang: the file's language for a per-language file, else None.
    kind: the record kind (data/records.py) every record must be.

  Returns:
    The file's ``FileIndex``.
  """
  keys, lang_ids, sizes = array.array("q"), array.array("H"), array.array("q")
  lang_pos: dict[str, int] = {}
  lang_first: list[int] = []
  reasons: dict[str, list[int]] = {}  # reason -> [count, first number]
  for number, key, raw in iter_file_records(path):
    parsed = parse_any(raw, default_lang, kind, path, number)
    if isinstance(parsed, str):
      entry = reasons.get(parsed)
      if entry is None:
        reasons[parsed] = [1, number]
      else:
        entry[0] += 1
      continue
    text, lang = parsed
    pos = lang_pos.get(lang)
    if pos is None:
      pos = lang_pos[lang] = len(lang_pos)
      lang_first.append(number)
    keys.append(key)
    lang_ids.append(pos)
    sizes.append(content_bytes(text))
  return FileIndex(np.frombuffer(keys, np.int64).copy(), np.frombuffer(lang_ids, np.uint16).copy(),
                   np.frombuffer(sizes, np.int64).copy(), tuple(lang_pos), tuple(lang_first), tuple(reasons),
                   tuple(c for c, _ in reasons.values()), tuple(f for _, f in reasons.values()))


def _cache_paths(path: str, default_lang: str | None, kind: str = "text") -> tuple[str, str]:
  """(beside the file, under the user's cache dir) for one absolute data path.

  A file read as a per-language file has a cache of its own per language, so
  that one also listed in train_files is not re-indexed on every start.
  """
  base = os.path.basename(path) + (f".{default_lang}" if default_lang else "") + ("" if kind == "text" else f".{kind}")
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:24]
  return (os.path.join(os.path.dirname(path), INDEX_DIR, base + ".npz"),
          os.path.join(root, "polyglot_jax", "doc_index", f"{digest}-{base}.npz"))


def _load_cache(cache: str, path: str, size: int, mtime_ns: int, default_lang: str | None,
                check_source: bool, kind: str = "text") -> FileIndex | None:
  """The cached index of ``path`` if ``cache`` holds one valid for this file state, else None."""
  try:
    with np.load(cache, allow_pickle=False) as z:
      if (int(z["version"]) != INDEX_VERSION or int(z["size"]) != size or int(z["mtime_ns"]) != mtime_ns
          or str(z["default_lang"]) != (default_lang or "") or str(z["kind"]) != kind):
        return None
      # A user-dir cache is named by a hash of the path: make sure it is this file's. One
      # beside the file is not checked, so that a data folder moved with its caches keeps them.
      if check_source and str(z["source"]) != path:
        return None
      index = FileIndex(z["keys"].astype(np.int64, copy=False), z["lang_ids"].astype(np.uint16, copy=False),
                        z["text_bytes"].astype(np.int64, copy=False),
                        tuple(str(c) for c in z["langs"]), tuple(int(n) for n in z["lang_first"]),
                        tuple(str(r) for r in z["reasons"]), tuple(int(n) for n in z["reason_counts"]),
                        tuple(int(n) for n in z["reason_first"]))
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # Unreadable or damaged: rebuild it.
    return None
  n = len(index.keys)
  if (len(index.lang_ids) != n or len(index.text_bytes) != n or len(index.lang_first) != len(index.langs)
      or (n and int(index.lang_ids.max()) >= len(index.langs))
      or not len(index.reasons) == len(index.reason_counts) == len(index.reason_first)):
    return None
  return index


def _save_cache(index: FileIndex, path: str, size: int, mtime_ns: int, default_lang: str | None,
                kind: str = "text") -> str:
  """Writes ``path``'s index beside it, else under the user's cache dir.

  Returns:
    "beside", "user", "racy" (the file changed too recently to trust its mtime:
    not kept) or "none" (neither place is writable).
  """
  arrays = dict(version=np.int64(INDEX_VERSION), size=np.int64(size), mtime_ns=np.int64(mtime_ns),
                default_lang=np.str_(default_lang or ""), kind=np.str_(kind), source=np.str_(path), keys=index.keys,
                lang_ids=index.lang_ids, text_bytes=index.text_bytes, langs=np.array(index.langs, dtype=str),
                lang_first=np.array(index.lang_first, np.int64), reasons=np.array(index.reasons, dtype=str),
                reason_counts=np.array(index.reason_counts, np.int64),
                reason_first=np.array(index.reason_first, np.int64))
  for where, cache in zip(("beside", "user"), _cache_paths(path, default_lang, kind)):
    tmp = None
    try:
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      # Written whole, then renamed: hosts indexing the same shared files at once
      # never see a half-written cache.
      fd, tmp = tempfile.mkstemp(prefix=os.path.basename(cache) + ".", suffix=".tmp", dir=os.path.dirname(cache))
      with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **arrays)
        written_ns = os.fstat(handle.fileno()).st_mtime_ns
      if abs(written_ns - mtime_ns) < RACY_NS:
        os.remove(tmp)
        return "racy"
      os.replace(tmp, cache)
      return where
    except OSError:
      if tmp is not None:
        try:
          os.remove(tmp)
        except OSError:
          pass
  return "none"


def _build(path: str, default_lang: str | None, size: int, mtime_ns: int, kind: str = "text") -> tuple[FileIndex, str]:
  """Indexes one file and caches the result (run in a worker process when parallel)."""
  index = index_file(path, default_lang, kind)
  return index, _save_cache(index, os.path.abspath(path), size, mtime_ns, default_lang, kind)


def _index_workers(todo: list[tuple[str, str | None, int, int]]) -> int:
  """How many processes index ``todo``: 1 (this one) unless there is enough to read."""
  value = os.environ.get(WORKERS_ENV, "")
  if value:
    try:
      workers = int(value)
    except ValueError:
      raise DataError(f"{WORKERS_ENV}={value!r} (polyglot_jax/data/doc_index.py) is not a whole number; "
                      "set it to the number of indexing processes (1: none)") from None
  else:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if sum(job[2] for job in todo) < PARALLEL_MIN_BYTES:
      return 1
  # Never from a worker process (grain's, or ours): it would start processes of its own.
  if multiprocessing.parent_process() is not None:
    return 1
  return max(1, min(workers, len(todo)))


def _build_all(todo: list[tuple[str, str | None, int, int]]) -> list[tuple[FileIndex, str]]:
  """Indexes files (in parallel when worthwhile); errors come in file order, as when serial."""
  if not todo:
    return []
  workers = _index_workers(todo)
  if workers > 1:
    # spawn, not fork: the parent may already run jax's threads, which fork can deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
      futures = [pool.submit(_build, *job) for job in todo]
      return [f.result() for f in futures]
    except concurrent.futures.process.BrokenProcessPool:
      _log_once(logging.WARNING, "pool", "document index: worker processes failed to start (a script without "
                "`if __name__ == '__main__':`?); indexing in this process instead")
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  return [_build(*job) for job in todo]


def _log_once(level: int, key: str, message: str, *args) -> None:
  """Logs a message once per process: the same advice on every file would bury the rest."""
  if key not in _logged:
    _logged.add(key)
    logging.log(level, message, *args)


def _file_indexes(jobs: list[tuple[str, str | None]], kind: str = "text") -> list[FileIndex]:
  """Each job's ``FileIndex``: from its cache when valid, else built (and cached)."""
  started = time.perf_counter()
  found: dict[tuple[str, str | None], FileIndex | None] = {}
  todo: list[tuple[str, str | None, int, int]] = []
  todo_keys: list[tuple[str, str | None]] = []
  for path, default_lang in jobs:
    full = os.path.abspath(path)
    if (full, default_lang) in found:
      continue  # The same file listed twice (two patterns matching it): one index serves both.
    try:  # Unreadable files fail here, cached or not, with the message reading them gives.
      with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
    except OSError as e:
      raise DataError(f"cannot read corpus file '{path}': {e.strerror}; check the path and permissions") from None
    for check_source, cache in zip((False, True), _cache_paths(full, default_lang, kind)):
      index = _load_cache(cache, full, stat.st_size, stat.st_mtime_ns, default_lang, check_source, kind)
      if index is not None:
        found[(full, default_lang)] = index
        break
    else:
      todo.append((path, default_lang, stat.st_size, stat.st_mtime_ns, kind))
      todo_keys.append((full, default_lang))
      found[(full, default_lang)] = None  # Filled in below.
  built = _build_all(todo)
  for key, (index, saved) in zip(todo_keys, built):
    found[key] = index
    if saved == "user":
      _log_once(logging.INFO, "user", "document index: %s is not writable; caching indexes under %s",
                os.path.join(os.path.dirname(key[0]), INDEX_DIR), os.path.dirname(_cache_paths(*key)[1]))
    elif saved == "none":
      _log_once(logging.WARNING, "none", "document index: neither %s nor %s is writable; every start re-reads "
                "every record (make one writable to start faster)", os.path.join(os.path.dirname(key[0]), INDEX_DIR),
                os.path.dirname(_cache_paths(*key)[1]))
  if jobs:
    logging.info("document index: %d files, %d from the cache, %d indexed; %.2fs", len(found),
                 len(found) - len(todo), len(todo), time.perf_counter() - started)
  return [found[(os.path.abspath(path), default_lang)] for path, default_lang in jobs]


def index_documents(train_files: Sequence[str], language_files: Sequence, what: str,
                    languages: Sequence[str] = (), kind: str = "text") -> tuple[dict[str, LanguageIndex], Counter]:
  """Validates every record and indexes the good ones by language.

  Each file's validation is cached beside it (see the module docstring), so
  only new or changed files are read; the result is the same either way.

  Args:
    train_files: glob patterns of mixed-language files.
    language_files: ((language code, glob pattern), ...) of single-language files.
    what: config key named in errors (e.g. "config.data.train_files").
    languages: if given, only these languages are kept; a record in another
      language is rejected and counted.
    kind: the record kind (``config.data.kind``) every record must be.

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
  files = [os.path.abspath(path) for path, _ in jobs]
  per_lang: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[int]]] = {}
  rejected: Counter = Counter()
  first_bad: dict[str, str] = {}
  for file_id, ((path, _), index) in enumerate(zip(jobs, _file_indexes(jobs, kind))):
    dropped = {pos for pos, lang in enumerate(index.langs) if keep and lang not in keep}
    counts = np.bincount(index.lang_ids, minlength=len(index.langs))
    # Reasons are counted in the order a record-by-record pass meets them, so the
    # Counter (and the warnings logged from it) come out as they always did.
    events = list(zip(index.reason_first, index.reasons, index.reason_counts))
    events += [(index.lang_first[pos], f"language '{index.langs[pos]}' not in config.data.languages", int(counts[pos]))
               for pos in sorted(dropped)]
    for first, reason, count in sorted(events, key=lambda e: e[0]):
      rejected[reason] += count
      first_bad.setdefault(reason, f"{path}:{first}")
    # Stable: each language's records stay in file order.
    order = np.argsort(index.lang_ids, kind="stable") if len(index.langs) > 1 else None
    ends = np.cumsum(counts)
    for pos, lang in enumerate(index.langs):
      if pos in dropped:
        continue
      rows = order[ends[pos] - counts[pos]:ends[pos]] if order is not None else slice(None)
      ids, keys, sizes = per_lang.setdefault(lang, ([], [], []))
      keys.append(index.keys[rows])
      ids.append(np.full(len(keys[-1]), file_id, np.int32))
      sizes.append(int(index.text_bytes[rows].sum()))
  log_rejected(rejected, first_bad)
  index = {lang: LanguageIndex(files, np.concatenate(ids).astype(np.int32), np.concatenate(keys).astype(np.int64),
                               int(sum(sizes)))
           for lang, (ids, keys, sizes) in per_lang.items()}
  return index, rejected


class DocReader:
  """Random access to one language's documents (a grain RandomAccessDataSource).

  Opens files lazily, per process and per thread: grain reads with several
  threads, and a shared handle's seek + readline would interleave between
  them. It pickles into grain's worker processes without open handles.
  """

  def __init__(self, index: LanguageIndex, lang: str, kind: str = "text"):
    self.index = index
    self.lang = lang
    self.kind = kind
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int):
    """Document i's content: its text (``text`` kind) or the kind's parsed record."""
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
    parsed = parse_any(raw, self.lang, self.kind, path, key)
    if isinstance(parsed, str):  # Validated when indexed: the file changed since.
      raise DataError(f"{path}: the record at {key} no longer parses ({parsed}); the file changed under a running job")
    return parsed[0]

  def __getstate__(self):
    return {"index": self.index, "lang": self.lang, "kind": self.kind}

  def __setstate__(self, state):
    self.__init__(state["index"], state["lang"], state.get("kind", "text"))

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


def estimate_tokens(texts_by_lang: dict[str, list], docs_by_lang: dict[str, int], processor,
                    encode=None) -> dict[str, dict]:
  """Per language: tokens per document (with its end token) on a sample, and the total it implies.

  Mixture rates are shares of tokens, while the streaming backends pick
  documents: a language's document weight is its token rate divided by its
  mean document length, so that tokens (not documents) follow the rates.
  ``encode`` turns one document's content into token ids (default: the
  processor on text).
  """
  out = {}
  for lang, texts in texts_by_lang.items():
    if not texts:
      raise DataError(f"language '{lang}' has no documents to sample; remove it from config.data.languages")
    encoded = processor.encode(texts) if encode is None else [encode(content) for content in texts]
    lengths = [len(ids) + 1 for ids in encoded]
    mean = float(np.mean(lengths))
    out[lang] = {"tokens_per_doc": mean, "tokens": mean * docs_by_lang[lang], "docs": docs_by_lang[lang]}
  return out
