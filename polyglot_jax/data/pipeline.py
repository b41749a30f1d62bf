"""JSONL text → tokens → packed rows → resumable, per-host batches.

Batches mix languages at the configured rates (data/mixing.py). The
iterator is deterministic given its seed, and its state (a few integers)
goes into every checkpoint; resuming replays nothing and skips nothing.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.data.mixing import MixtureSampler
from polyglot_jax.data.packing import FIELDS, pack_documents
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


def tokenize_and_pack(records, processor, language_ids: dict[str, int], seq_len: int) -> dict[str, np.ndarray]:
  """Encodes (text, lang) records with SentencePiece and packs them."""
  texts = [t for t, _ in records]
  ids = processor.encode(texts) if texts else []
  docs = ((tokens, language_ids[lang]) for tokens, (_, lang) in zip(ids, records))
  return pack_documents(docs, seq_len, processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0))


class PackedBatches:
  """Deterministic, resumable batches of packed rows, languages mixed at set rates.

  Each row holds one language. The language of every row slot is drawn by a
  ``MixtureSampler`` from the mixture rates; the row itself is the next one
  of that language's stream, which walks a fresh permutation of the
  language's rows every epoch. Every process draws the whole global batch
  (cheap: integers) and keeps its own slice, so hosts never overlap and the
  state — draws so far and rows used per language — is the same everywhere.
  """

  def __init__(self, rows: dict[str, np.ndarray], rates: Sequence[float], global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.rows = rows
    self.num_rows = len(rows["inputs"])
    if self.num_rows == 0:
      raise DataError("the training data packed into 0 rows; add text or lower data.seq_len")
    if global_batch_size % process_count:
      raise DataError(f"data.global_batch_size={global_batch_size} is not divisible by the {process_count} processes")
    row_lang = rows["lang_ids"][:, 0]
    self.streams = [np.flatnonzero(row_lang == lang) for lang in range(len(rates))]
    for lang, (rate, stream) in enumerate(zip(rates, self.streams)):
      if rate > 0 and len(stream) == 0:
        raise DataError(f"language id {lang} has mixture rate {rate:.3g} but no training rows")
    self.sampler = MixtureSampler({lang: float(r) for lang, r in enumerate(rates)}, seed)
    self.consumed = np.zeros(len(rates), np.int64)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.seed = seed
    self.step = 0
    self._perms: dict[tuple[int, int], np.ndarray] = {}

  def _row(self, lang: int) -> int:
    stream = self.streams[lang]
    epoch, offset = divmod(int(self.consumed[lang]), len(stream))
    key = (lang, epoch)
    if key not in self._perms:
      if len(self._perms) > 4 * len(self.streams):
        self._perms.clear()
      self._perms[key] = np.random.default_rng([self.seed, lang, epoch]).permutation(len(stream))
    self.consumed[lang] += 1
    return int(stream[self._perms[key][offset]])

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    index = np.asarray([self._row(self.sampler.next_index()) for _ in range(self.global_batch_size)])
    mine = index[self.process_index * self.local_batch_size:(self.process_index + 1) * self.local_batch_size]
    self.step += 1
    return {k: self.rows[k][mine] for k in FIELDS}


  def get_state(self) -> dict:
    return {"step": self.step, "seed": self.seed, "num_rows": self.num_rows,
            "global_batch_size": self.global_batch_size, "draws": self.sampler.index,
            "consumed": [int(c) for c in self.consumed]}

  def set_state(self, state: dict) -> None:
    if state.get("num_rows") != self.num_rows or state.get("global_batch_size") != self.global_batch_size:
      raise DataError(
          f"the checkpoint's data iterator was over {state.get('num_rows')} rows in batches of "
          f"{state.get('global_batch_size')}, this run has {self.num_rows} rows in batches of "
          f"{self.global_batch_size}; resume with the same data and batch size or use a new workdir")
    self.step = int(state["step"])
    self.seed = int(state["seed"])
    self.sampler.set_state({"index": state["draws"], "seed": self.seed})
    self.consumed = np.asarray(state["consumed"], np.int64)


def eval_batches(rows: dict[str, np.ndarray], batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Fixed held-out batches (padded with zero-weight rows); this process's slice."""
  n = len(rows["inputs"])
  padded = -(-n // batch_size) * batch_size
  out = []
  local = batch_size // process_count
  for start in range(0, padded, batch_size):
    batch = {}
    for k in FIELDS:
      block = rows[k][start:start + batch_size]
      if len(block) < batch_size:
        pad = np.zeros((batch_size - len(block),) + block.shape[1:], block.dtype)
        block = np.concatenate([block, pad])
      batch[k] = block[process_index * local:(process_index + 1) * local]
    out.append(batch)
  return out
