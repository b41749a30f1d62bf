"""Sequence packing: many documents per row, with segment ids and positions.

Each document becomes ``[bos] + tokens + [eos]``; its inputs are all but the
last token and its targets all but the first. Rows are filled greedily in
order; a document longer than a row is cut into row-sized pieces. Fields of a
packed row:

- ``segment_ids``: 1, 2, ... per document in the row; 0 marks padding.
- ``positions``: restart at 0 for each document (RoPE sees each alone).
- ``loss_weights``: 1 on real targets, 0 on padding.
- ``lang_ids``: the document's language id on every one of its tokens.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

FIELDS = ("inputs", "targets", "loss_weights", "segment_ids", "positions", "lang_ids")


def pack_documents(docs: Iterable[tuple[list[int] | np.ndarray, int]], seq_len: int,
                   bos_id: int, eos_id: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """Packs (token ids, lang id) documents into rows of ``seq_len``.

  Args:
    docs: iterable of (token ids without bos/eos, language id).
    seq_len: tokens per row.
    bos_id, eos_id, pad_id: special token ids.

  Returns:
    dict of int32 arrays [num_rows, seq_len], keys ``FIELDS``.
  """
  rows: list[dict[str, np.ndarray]] = []
  cur = _empty_row(seq_len, pad_id)
  fill = 0
  segment = 0
  for tokens, lang_id in docs:
    seq = np.concatenate([[bos_id], np.asarray(tokens, np.int64), [eos_id]])
    inputs, targets = seq[:-1], seq[1:]
    for start in range(0, len(inputs), seq_len):
      piece_in = inputs[start:start + seq_len]
      piece_tg = targets[start:start + seq_len]
      n = len(piece_in)
      if fill + n > seq_len:
        rows.append(cur)
        cur, fill, segment = _empty_row(seq_len, pad_id), 0, 0
      segment += 1
      sl = slice(fill, fill + n)
      cur["inputs"][sl] = piece_in
      cur["targets"][sl] = piece_tg
      cur["loss_weights"][sl] = 1
      cur["segment_ids"][sl] = segment
      cur["positions"][sl] = np.arange(n)
      cur["lang_ids"][sl] = lang_id
      fill += n
  if fill:
    rows.append(cur)
  if not rows:
    return {k: np.zeros((0, seq_len), np.int32) for k in FIELDS}
  return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in FIELDS}


def _empty_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  row = {k: np.zeros(seq_len, np.int64) for k in FIELDS}
  row["inputs"][:] = pad_id
  row["targets"][:] = pad_id
  return row
