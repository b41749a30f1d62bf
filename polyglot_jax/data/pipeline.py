"""JSONL text → tokens → packed rows → resumable, per-host batches.

The iterator is a pure function of (seed, step): the global batch of step s
is a fixed set of packed rows (a fresh permutation every epoch), and each
process reads only its own slice of it. Its state is therefore just the next
step, which goes into every checkpoint; resuming replays nothing and skips
nothing.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.data.packing import FIELDS, pack_documents


class DataError(ValueError):
  """Unreadable or unusable input; the message names the file and what to do."""


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
  files: list[str] = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern))
    if not matched:
      raise DataError(f"{what}: '{pattern}' matches no file; check the path")
    files.extend(matched)
  return files


def read_jsonl(paths: Sequence[str]) -> tuple[list[tuple[str, str]], Counter]:
  """Reads {"text", "lang"} records; malformed lines are counted, not dropped silently.

  Returns:
    (list of (text, canonical language code), Counter of rejection reasons).
  """
  records: list[tuple[str, str]] = []
  rejected: Counter = Counter()
  first_bad: dict[str, str] = {}
  for path in paths:
    try:
      handle = open(path, "rb")
    except OSError as e:
      raise DataError(f"cannot read corpus file '{path}': {e.strerror}; check the path and permissions") from None
    with handle:
      for lineno, raw in enumerate(handle, 1):
        if not raw.strip():
          continue
        reason = None
        try:
          record = json.loads(raw.decode("utf-8"))
          text, lang = record["text"], record["lang"]
          if not isinstance(text, str) or not text:
            reason = "empty or non-string text"
          else:
            lang = langs.resolve(lang)
        except UnicodeDecodeError:
          reason = "invalid UTF-8"
        except json.JSONDecodeError:
          reason = "malformed JSON"
        except (KeyError, TypeError):
          reason = "missing 'text' or 'lang' field"
        except langs.UnknownLanguageError:
          reason = f"unknown language {record.get('lang')!r}"
        if reason:
          rejected[reason] += 1
          first_bad.setdefault(reason, f"{path}:{lineno}")
          continue
        records.append((text, lang))
  for reason, count in rejected.items():
    logging.warning("rejected %d records (%s); first at %s", count, reason, first_bad[reason])
  return records, rejected


def tokenize_and_pack(records, processor, language_ids: dict[str, int], seq_len: int) -> dict[str, np.ndarray]:
  """Encodes (text, lang) records with SentencePiece and packs them."""
  texts = [t for t, _ in records]
  ids = processor.encode(texts) if texts else []
  docs = ((tokens, language_ids[lang]) for tokens, (_, lang) in zip(ids, records))
  return pack_documents(docs, seq_len, processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0))


class PackedBatches:
  """Deterministic, resumable batches over packed rows; this process's slice only."""

  def __init__(self, rows: dict[str, np.ndarray], global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.rows = rows
    self.num_rows = len(rows["inputs"])
    if self.num_rows == 0:
      raise DataError("the training data packed into 0 rows; add text or lower data.seq_len")
    if global_batch_size % process_count:
      raise DataError(f"data.global_batch_size={global_batch_size} is not divisible by the {process_count} processes")
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.seed = seed
    self.step = 0
    self._perm_epoch = -1
    self._perm = None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
      self._perm_epoch = epoch
    return self._perm

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    index = np.empty(self.local_batch_size, np.int64)
    for i in range(self.local_batch_size):
      epoch, offset = divmod(start + i, self.num_rows)
      index[i] = self._permutation(epoch)[offset]
    return {k: self.rows[k][index] for k in FIELDS}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self.step, "seed": self.seed, "num_rows": self.num_rows,
            "global_batch_size": self.global_batch_size}

  def set_state(self, state: dict) -> None:
    if state.get("num_rows") != self.num_rows or state.get("global_batch_size") != self.global_batch_size:
      raise DataError(
          f"the checkpoint's data iterator was over {state.get('num_rows')} rows in batches of "
          f"{state.get('global_batch_size')}, this run has {self.num_rows} rows in batches of "
          f"{self.global_batch_size}; resume with the same data and batch size or use a new workdir")
    self.step = int(state["step"])
    self.seed = int(state["seed"])

  @property
  def epochs_per_step(self) -> float:
    return self.global_batch_size / self.num_rows


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
