"""grain backend: per-language random-access documents → mixture → host shard → tokens → packed rows.

    language l: MapDataset.source(DocReader).shuffle(seed_l).repeat()   (reshuffled every epoch)
    mixed     = MapDataset.mix(languages, document weights)             (deterministic interleave)
    this host = mixed[process_index::process_count]                     (disjoint shards)
    tokens    = .map(SentencePiece) → IterDataset (threads or worker processes)
    rows      = stream.StreamBatches (packing with segment_ids, positions, lang_ids)

Everything before packing is indexable, so a host's place in its stream is
one integer: resuming opens ``shard[position:]`` without reading anything
that came before. Document weights are the mixture's token rates divided by
each language's mean document length, so tokens — not documents — follow the
rates.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np


class _Tokenize(grain.transforms.Map):
  """(text, lang id) → (token ids, lang id); loads SentencePiece lazily so it pickles into workers."""

  def __init__(self, model_file: str):
    self.model_file = model_file
    self._processor = None

  def map(self, element):
    if self._processor is None:
      import sentencepiece as spm
      self._processor = spm.SentencePieceProcessor(model_file=self.model_file)
    text, lang_id = element
    return np.asarray(self._processor.encode(text), np.int32), lang_id

  def __getstate__(self):
    return {"model_file": self.model_file, "_processor": None}


def language_seed(seed: int, lang_id: int) -> int:
  return int(np.random.SeedSequence([seed, lang_id]).generate_state(1)[0])


def host_documents(readers: dict[int, object], doc_weights: dict[int, float], seed: int,
                   process_index: int, process_count: int) -> grain.MapDataset:
  """This host's infinite, indexable stream of (text, lang id).

  Args:
    readers: lang id → random-access documents of that language (DocReader).
    doc_weights: lang id → document sampling weight; languages at 0 are left out.
    seed: shuffle seed; each language reshuffles every epoch.
    process_index, process_count: this host's shard.
  """
  parts, weights = [], []
  for lang_id in sorted(readers):
    weight = doc_weights.get(lang_id, 0.0)
    if weight <= 0:
      continue
    ds = grain.MapDataset.source(readers[lang_id]).shuffle(seed=language_seed(seed, lang_id)).repeat()
    parts.append(ds.map(lambda text, lang_id=lang_id: (text, lang_id)))
    weights.append(weight)
  mixed = grain.MapDataset.mix(parts, weights) if len(parts) > 1 else parts[0]
  return mixed[process_index::process_count]


def stream_opener(documents: grain.MapDataset, model_file: str, read_threads: int, workers: int):
  """position → iterator of (token ids, lang id) from that document of the host's stream."""

  def open_stream(position: int) -> Iterator[tuple[np.ndarray, int]]:
    ds = documents[position:].map(_Tokenize(model_file))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(read_threads, 1), prefetch_buffer_size=256))
    if workers > 0:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)

  return open_stream
