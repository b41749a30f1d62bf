"""Streaming packing with an exact resume point, shared by the grain and seqio backends.

A backend supplies this host's document stream as ``open(position)``: an
iterator of (token ids, language id) starting at document ``position`` of
the host's shard. ``StreamBatches`` packs it into rows with the shared
row writer (``rows.greedy_rows``: ``[bos] + tokens + [eos]``, documents
longer than a row cut into row-sized pieces, a piece that does not fit
starts a new row) and hands out batches of rows.

Resume point: every row ends just before some piece — document ``position``
from token ``offset`` — so the state after a batch is that pair. A restored
run opens the stream at ``position``, drops ``offset`` tokens of the first
document and packs into an empty row, which is exactly what the
uninterrupted run does next. Each host has its own pair; the checkpoint
keeps all of them (gathered across hosts) and each host takes its own back.

Code-switching (``code_switch``, data/codeswitch.py) is applied here, to each
document as it leaves the stream, with the document's place in the host's
stream as its identity — the number the resume point stores — so a resumed
stream switches exactly as an uninterrupted one. A switch is counted once the
resume point has passed it (the row holding it was handed out, or sits in the
best-fit packer's saved rows); the counts travel in the state and are logged,
summed over hosts, whenever the state is saved.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Callable, Iterator

import jax
import numpy as np

from polyglot_jax.data import codeswitch
from polyglot_jax.data.rows import WindowedBestFit, document_parts, document_pieces, greedy_rows
from polyglot_jax.errors import DataError

DocStream = Callable[[int], Iterator[tuple[np.ndarray, int]]]


class StreamBatches:
  """Resumable packed batches over a per-host document stream.

  Args:
    open_stream: position → iterator of (token ids, language id) from that document on.
    seq_len: tokens per row.
    local_batch_size: rows per batch on this host.
    bos_id, eos_id, pad_id: special token ids.
    fingerprint: what must match for a checkpoint's state to apply (backend,
      languages, rates, seed, batch size, ...); a mismatch is an error naming it.
    on_host_change: "error" or "restart" when the checkpoint had another host count.
    packing: "greedy" (close a row when the next piece does not fit) or "best_fit"
      (each piece into the open row with the least room that holds it, over a window
      of ``open_rows`` open rows; the open rows travel in the checkpoint).
    code_switch: a ``codeswitch.CodeSwitcher`` applied to every document (None: off).
  """

  def __init__(self, open_stream: DocStream, seq_len: int, local_batch_size: int, bos_id: int, eos_id: int,
               pad_id: int, fingerprint: dict, on_host_change: str = "error",
               process_index: int | None = None, process_count: int | None = None, packing: str = "greedy",
               open_rows: int = 8, code_switch=None):
    self.open_stream = open_stream
    self.seq_len = seq_len
    self.local_batch_size = local_batch_size
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.fingerprint = json.loads(json.dumps(fingerprint))
    self.on_host_change = on_host_change
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    self.position, self.offset = 0, 0
    self.step = 0
    self._rows = None
    self.packing = packing
    self._packer = WindowedBestFit(seq_len, pad_id, open_rows) if packing == "best_fit" else None
    if packing == "best_fit":
      self.fingerprint["packing"] = f"best_fit/{open_rows}"
    self.code_switch = code_switch
    self.switch_counts = Counter()  # Switches the resume point has passed, per (document, translation) language.
    self._pending: list[tuple[int, codeswitch.Switch]] = []  # (document position, switch) not passed yet.
    if code_switch is not None:  # Absent when off, so that earlier checkpoints still resume.
      self.fingerprint["code_switch"] = json.loads(json.dumps(code_switch.fingerprint()))

  # ---- Iteration.

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._rows is None:
      self._rows = self._packed_rows(self.position, self.offset)
    rows = []
    for _ in range(self.local_batch_size):
      try:
        row, (self.position, self.offset) = next(self._rows)
      except StopIteration:
        raise DataError("the document stream ended; streaming backends repeat their data, so a source "
                        "became empty — check the data files") from None
      rows.append(row)
    self.step += 1
    if self._pending:
      self._count_passed()
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def _switched(self, doc: tuple, position: int, offset: int) -> tuple:
    """The document at ``position``, code-switched; its switches from ``offset`` on wait to be counted."""
    if self.code_switch is None:
      return doc
    tokens, lang, weights, _ = document_parts(doc)
    if weights is not None:  # Text records carry no weights; a weighted kind is not switched.
      return doc
    switched = self.code_switch.switch(tokens, lang, (codeswitch.STREAMED, self.process_index, position))
    if switched is None:
      return doc
    self._pending.extend((position, s) for s in switched.switches if s.position >= offset)
    return switched.as_doc(lang)

  def _count_passed(self) -> None:
    """Counts the pending switches that lie before the resume point."""
    resume = (self.position, self.offset)
    passed = [s for pos, s in self._pending if (pos, s.position) < resume]
    self._pending = [(pos, s) for pos, s in self._pending if (pos, s.position) >= resume]
    self.switch_counts.update(codeswitch.count(passed))

  def _packed_rows(self, position: int, offset: int):
    """Rows with the resume point after each: (row, (position, offset))."""
    if self._packer is not None:
      yield from self._best_fit_rows(position, offset)
      return
    docs = ((self._switched(doc, position + i, offset if i == 0 else 0), offset if i == 0 else 0)
            for i, doc in enumerate(self.open_stream(position)))
    for row, (consumed, start) in greedy_rows(docs, self.seq_len, self.bos_id, self.eos_id, self.pad_id):
      yield row, (position + consumed, start)

  def _best_fit_rows(self, position: int, offset: int):
    """Windowed best-fit rows; the resume point is the next piece to read (plus the packer's state)."""
    packer = self._packer
    resume = (position, offset)
    while packer.ready:
      yield packer.ready.pop(0), resume
    for i, doc in enumerate(self.open_stream(position)):
      doc = self._switched(doc, position + i, offset if i == 0 else 0)
      tokens, lang, token_weights, token_targets = document_parts(doc)
      length = len(tokens) + 1  # Inputs of [bos] + tokens + [eos].
      for start, inputs, targets, weights in document_pieces(tokens, self.bos_id, self.eos_id, self.seq_len,
                                                             token_weights, offset if i == 0 else 0,
                                                             token_targets):
        packer.add(inputs, targets, weights, lang)
        end = start + len(inputs)
        resume = (position + i, end) if end < length else (position + i + 1, 0)
        while packer.ready:
          yield packer.ready.pop(0), resume
    packer.flush()
    while packer.ready:
      yield packer.ready.pop(0), resume

  # ---- State.

  def local_state(self) -> dict:
    state = {"position": int(self.position), "offset": int(self.offset)}
    if self._packer is not None:
      state["packer"] = self._packer.state()
    if self.code_switch is not None:
      state["code_switches"] = codeswitch.counts_to_json(self.switch_counts)
    return state

  def get_state(self) -> dict:
    """The whole job's iterator state: every host's resume point (a collective on multi-host).

    With code-switching on, also logs (process 0) the job's switch counts so far.
    """
    hosts = [self.local_state()]
    if self.process_count > 1:
      hosts = _allgather_json(self.local_state())
    if self.code_switch is not None and self.process_index == 0:
      total = sum((codeswitch.counts_from_json(h.get("code_switches", {})) for h in hosts), Counter())
      logging.info("code-switching after %d batches: %s", self.step, codeswitch.summary(total))
    return {"step": self.step, "fingerprint": self.fingerprint, "process_count": self.process_count,
            "hosts": hosts}

  def set_state(self, state: dict) -> None:
    saved = state.get("fingerprint", {})
    for key in sorted(set(saved) | set(self.fingerprint)):
      if saved.get(key) != self.fingerprint.get(key):
        raise DataError(
            f"the checkpoint's data iterator was made with data.{key}={saved.get(key)!r}, this run has "
            f"{self.fingerprint.get(key)!r}; resume with the same data settings or use a new workdir")
    self.step = int(state["step"])
    self._rows = None
    self._pending = []
    self.switch_counts = Counter()
    if state["process_count"] != self.process_count:
      message = (f"the checkpoint's data iterator was saved by {state['process_count']} hosts and this run has "
                 f"{self.process_count}: each host's shard of the data changes with the host count")
      if self.on_host_change == "error":
        raise DataError(message + "; resume with the same host count, or set "
                        "config.data.on_host_change=restart to start every shard afresh (documents may repeat)")
      logging.warning("%s; data.on_host_change=restart: every host starts its shard from the beginning", message)
      self.position, self.offset = 0, 0
      if self._packer is not None:
        self._packer.set_state({})
      return
    mine = state["hosts"][self.process_index]
    self.position, self.offset = int(mine["position"]), int(mine["offset"])
    self.switch_counts = codeswitch.counts_from_json(mine.get("code_switches", {}))
    if self._packer is not None:
      self._packer.set_state(mine.get("packer", {}))


def _allgather_json(value: dict) -> list[dict]:
  """Every host's small JSON value, in process order (a collective)."""
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, sizes)]


class RecordRowBatches(StreamBatches):
  """Batches of kinds whose records are not packed as documents (preference pairs, dictionary groups).

  Each record becomes its own row(s) through the kind's row maker
  (``rows_of(content, lang id) → dict of [n, ...] arrays``); the resume point
  is (record position, row within the record).
  """

  def __init__(self, open_stream: DocStream, rows_of, local_batch_size: int, fingerprint: dict,
               on_host_change: str = "error", process_index: int | None = None, process_count: int | None = None):
    super().__init__(open_stream, 0, local_batch_size, 0, 0, 0, fingerprint, on_host_change, process_index,
                     process_count)
    self.rows_of = rows_of

  def _packed_rows(self, position: int, offset: int):
    for i, (content, lang) in enumerate(self.open_stream(position)):
      made = self.rows_of(content, lang)
      n = len(next(iter(made.values())))
      for r in range(offset if i == 0 else 0, n):
        yield {k: v[r] for k, v in made.items()}, ((position + i, r + 1) if r + 1 < n else (position + i + 1, 0))
