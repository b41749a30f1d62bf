"""The row writer both packers share: documents → fixed-length rows with segment ids and positions.

A document is ``[bos] + tokens + [eos]``; its inputs are all but the last
token and its targets all but the first, and each target carries a loss
weight (1 for text; 0 on masked prompt tokens of instruction records). A
document may also carry its own target of each token (code-switching,
data/codeswitch.py: the position before a switched word still predicts the
original word). A document longer than a row is cut into row-sized pieces. Fields of a row
(``TEXT_FIELDS``):

- ``segment_ids``: 1, 2, ... per piece in the row; 0 marks padding.
- ``positions``: restart at 0 for each piece (RoPE sees each alone).
- ``loss_weights``: the targets' weights; 0 on padding.
- ``lang_ids``: the document's language id on every one of its tokens.

Placement: ``greedy`` keeps one open row and closes it when the next piece
does not fit (the streaming packer's rule: its resume point is where a row
closed). ``best_fit`` keeps every row open and puts each piece into the row
with the least room that still holds it (fewer padding tokens), opening a
new row only when none does.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator

import numpy as np

from polyglot_jax.objectives.base import TEXT_FIELDS

PACKING_MODES = ("greedy", "best_fit")


def document_pieces(tokens, bos_id: int, eos_id: int, seq_len: int, token_weights=None, start: int = 0,
                    token_targets=None) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
  """(start, inputs, targets, weights) of each row-sized piece of one document, from ``start`` on.

  Args:
    tokens: the document's token ids (no bos/eos).
    token_weights: loss weight of each token as a target (None: all 1); the eos
      target has weight 1.
    start: first input position to emit (the streaming resume offset).
    token_targets: the target that stands in for each token (None: the token
      itself); position i of the inputs predicts ``token_targets[i]``, the last
      position predicts eos.

  Returns:
    An iterator of (input offset of the piece, inputs, targets, weights).
  """
  seq = np.concatenate([[bos_id], np.asarray(tokens, np.int64), [eos_id]])
  weights = np.ones(len(seq) - 1, np.int64)
  if token_weights is not None:
    weights[:len(tokens)] = np.asarray(token_weights, np.int64)
  inputs, targets = seq[:-1], seq[1:]
  if token_targets is not None:
    targets = targets.copy()
    targets[:len(tokens)] = np.asarray(token_targets, np.int64)
  for s in range(start, len(inputs), seq_len):
    yield s, inputs[s:s + seq_len], targets[s:s + seq_len], weights[s:s + seq_len]


def document_parts(doc: tuple) -> tuple:
  """(tokens, lang, token weights or None, token targets or None) of a document tuple of 2 to 4 items."""
  return doc[0], doc[1], doc[2] if len(doc) > 2 else None, doc[3] if len(doc) > 3 else None


def empty_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  row = {k: np.zeros(seq_len, np.int32) for k in TEXT_FIELDS}
  row["inputs"][:] = pad_id
  row["targets"][:] = pad_id
  return row


def write_piece(row: dict[str, np.ndarray], fill: int, segment: int, inputs, targets, weights, lang: int) -> int:
  """Writes one piece at ``fill`` as segment ``segment``; returns the new fill."""
  n = len(inputs)
  sl = slice(fill, fill + n)
  row["inputs"][sl] = inputs
  row["targets"][sl] = targets
  row["loss_weights"][sl] = weights
  row["segment_ids"][sl] = segment
  row["positions"][sl] = np.arange(n)
  row["lang_ids"][sl] = lang
  return fill + n


class BestFitRows:
  """Every row open; each piece goes to the row with the least room that still holds it."""

  def __init__(self, seq_len: int, pad_id: int):
    self.seq_len, self.pad_id = seq_len, pad_id
    self.rows: list[dict[str, np.ndarray]] = []
    self.fill: list[int] = []
    self.segments: list[int] = []
    self._rooms: list[tuple[int, int]] = []  # Sorted (room, row index) of rows with room left.

  def add(self, inputs, targets, weights, lang: int) -> None:
    n = len(inputs)
    i = bisect.bisect_left(self._rooms, (n, -1))
    if i < len(self._rooms):
      room, row = self._rooms.pop(i)
    else:
      row = len(self.rows)
      self.rows.append(empty_row(self.seq_len, self.pad_id))
      self.fill.append(0)
      self.segments.append(0)
      room = self.seq_len
    self.segments[row] += 1
    self.fill[row] = write_piece(self.rows[row], self.fill[row], self.segments[row], inputs, targets, weights, lang)
    if room - n > 0:
      bisect.insort(self._rooms, (room - n, row))


def pack_documents(docs: Iterable[tuple], seq_len: int, bos_id: int, eos_id: int, pad_id: int = 0,
                   mode: str = "greedy") -> dict[str, np.ndarray]:
  """Packs documents into rows of ``seq_len``.

  Args:
    docs: iterable of (token ids without bos/eos, language id), optionally
      followed by per-token loss weights (or None) and per-token targets
      (``document_parts``).
    seq_len: tokens per row.
    bos_id, eos_id, pad_id: special token ids.
    mode: "greedy" (rows in document order) or "best_fit" (least padding).

  Returns:
    dict of int32 arrays [num_rows, seq_len], keys ``TEXT_FIELDS``.
  """
  if mode not in PACKING_MODES:
    raise ValueError(f"packing mode '{mode}'; use one of {PACKING_MODES}")
  if mode == "best_fit":
    packer = BestFitRows(seq_len, pad_id)
    for doc in docs:
      tokens, lang, token_weights, token_targets = document_parts(doc)
      for _, inputs, targets, weights in document_pieces(tokens, bos_id, eos_id, seq_len, token_weights,
                                                         token_targets=token_targets):
        packer.add(inputs, targets, weights, lang)
    rows = packer.rows
  else:
    rows = [row for row, _ in greedy_rows(((doc, 0) for doc in docs), seq_len, bos_id, eos_id, pad_id)]
  if not rows:
    return {k: np.zeros((0, seq_len), np.int32) for k in TEXT_FIELDS}
  return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in TEXT_FIELDS}


def greedy_rows(docs: Iterable[tuple[tuple, int]], seq_len: int, bos_id: int, eos_id: int,
                pad_id: int) -> Iterator[tuple[dict[str, np.ndarray], tuple[int, int]]]:
  """Greedy rows over (document, start offset) pairs, each with the resume point after it.

  The resume point is (documents fully or partly consumed before the row's end,
  input offset into the next document): reopening the stream there and packing
  into an empty row continues exactly as this iterator does.
  """
  row, fill, segment = empty_row(seq_len, pad_id), 0, 0
  position = 0
  for doc, offset in docs:
    tokens, lang, token_weights, token_targets = document_parts(doc)
    for start, inputs, targets, weights in document_pieces(tokens, bos_id, eos_id, seq_len, token_weights, offset,
                                                           token_targets):
      if fill + len(inputs) > seq_len:
        yield row, (position, start)
        row, fill, segment = empty_row(seq_len, pad_id), 0, 0
      segment += 1
      fill = write_piece(row, fill, segment, inputs, targets, weights, lang)
    position += 1
  if fill:
    yield row, (position, 0)


def padding_fraction(rows: dict[str, np.ndarray]) -> float:
  """Share of row positions that hold no token."""
  seg = rows["segment_ids"]
  return float((seg == 0).sum() / max(seg.size, 1))


class WindowedBestFit:
  """Best-fit over a bounded window of open rows, for streams, with its state as plain JSON.

  Each piece goes to the open row with the least room that still holds it;
  when none does and ``max_open`` rows are open, the fullest open row is
  emitted first. A row with no room left is emitted at once. Emitted rows
  wait in ``ready`` until taken. ``state()`` / ``set_state()`` carry the open
  and ready rows, so a resumed stream continues exactly.
  """

  def __init__(self, seq_len: int, pad_id: int, max_open: int):
    self.seq_len, self.pad_id, self.max_open = seq_len, pad_id, max(1, max_open)
    self.open: list[list] = []  # [row, fill, segments]
    self.ready: list[dict[str, np.ndarray]] = []

  def add(self, inputs, targets, weights, lang: int) -> None:
    n = len(inputs)
    fits = [(self.seq_len - fill, i) for i, (_, fill, _) in enumerate(self.open) if self.seq_len - fill >= n]
    if fits:
      i = min(fits)[1]
    else:
      if len(self.open) >= self.max_open:
        fullest = min(range(len(self.open)), key=lambda j: (self.seq_len - self.open[j][1], j))
        self.ready.append(self.open.pop(fullest)[0])
      self.open.append([empty_row(self.seq_len, self.pad_id), 0, 0])
      i = len(self.open) - 1
    entry = self.open[i]
    entry[2] += 1
    entry[1] = write_piece(entry[0], entry[1], entry[2], inputs, targets, weights, lang)
    if entry[1] == self.seq_len:
      self.ready.append(self.open.pop(i)[0])

  def flush(self) -> None:
    """Emits every open row (the stream ended)."""
    self.ready.extend(entry[0] for entry in self.open)
    self.open = []

  def state(self) -> dict:
    return {"open": [{"fill": fill, "segments": seg, "row": _encode_row(row, fill)} for row, fill, seg in self.open],
            "ready": [_encode_row(row, self.seq_len) for row in self.ready]}

  def set_state(self, state: dict) -> None:
    self.open = [[_decode_row(e["row"], self.seq_len, self.pad_id), int(e["fill"]), int(e["segments"])]
                 for e in state.get("open", [])]
    self.ready = [_decode_row(r, self.seq_len, self.pad_id) for r in state.get("ready", [])]


def _encode_row(row: dict[str, np.ndarray], fill: int) -> dict[str, str]:
  """The filled part of a row as base64 int32 per field (compact enough for a JSON checkpoint item)."""
  import base64
  return {k: base64.b64encode(np.ascontiguousarray(row[k][:fill], np.int32).tobytes()).decode() for k in TEXT_FIELDS}


def _decode_row(encoded: dict[str, str], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  import base64
  row = empty_row(seq_len, pad_id)
  for k in TEXT_FIELDS:
    values = np.frombuffer(base64.b64decode(encoded[k]), np.int32)
    row[k][:len(values)] = values
  return row
