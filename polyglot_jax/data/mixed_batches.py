"""In-memory packed rows → resumable, per-host batches with languages mixed at set rates.

Batches mix languages at the configured rates (data/mixing.py). The
iterator is deterministic given its seed, and its state (a few integers)
goes into every checkpoint; resuming replays nothing and skips nothing.
Rows may have any fields (those of the record kind); the batch has them all.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from polyglot_jax.data.mixing import MixtureSampler
from polyglot_jax.data.packing import pack_documents
from polyglot_jax.errors import DataError


# Optional key of a rows dict: the language id of each row (kinds whose rows have no lang_ids field).
ROW_LANG = "row_lang"


def num_rows(rows: dict[str, np.ndarray]) -> int:
  return len(next(iter(rows.values()))) if rows else 0


def row_languages(rows: dict[str, np.ndarray]) -> np.ndarray:
  """Language id of each row: ``rows[ROW_LANG]``, else the first token's ``lang_ids``."""
  return rows[ROW_LANG] if ROW_LANG in rows else rows["lang_ids"][:, 0]


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
    self.rows = {k: v for k, v in rows.items() if k != ROW_LANG}
    self.num_rows = num_rows(rows)
    if self.num_rows == 0:
      raise DataError("the training data packed into 0 rows; add text or lower data.seq_len")
    if global_batch_size % process_count:
      raise DataError(f"data.global_batch_size={global_batch_size} is not divisible by the {process_count} processes")
    row_lang = row_languages(rows)
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
    return {k: v[mine] for k, v in self.rows.items()}


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
  n = num_rows(rows)
  padded = -(-n // batch_size) * batch_size
  out = []
  local = batch_size // process_count
  for start in range(0, padded, batch_size):
    batch = {}
    for k, v in rows.items():
      if k == ROW_LANG:
        continue
      block = v[start:start + batch_size]
      if len(block) < batch_size:
        pad = np.zeros((batch_size - len(block),) + block.shape[1:], block.dtype)
        block = np.concatenate([block, pad])
      batch[k] = block[process_index * local:(process_index + 1) * local]
    out.append(batch)
  return out
