"""grain backend: per-language random-access documents → mixture → host shard → tokens → packed rows.

    language l: MapDataset.source(DocReader).shuffle(seed_l).repeat()   (reshuffled every epoch)
    mixed     = MapDataset.mix(languages, document weights)             (deterministic interleave)
    this host = mixed[process_index::process_count]                     (disjoint shards)
    tokens    = .map(SentencePiece) → IterDataset (threads or worker processes)
    rows      = stream.StreamBatches (code-switching when on, packing with segment_ids, positions, lang_ids)

Everything before packing is indexable, so a host's place in its stream is
one integer: resuming opens ``shard[position:]`` without reading anything
that came before. Document weights are the mixture's token rates divided by
each language's mean document length, so tokens — not documents — follow the
rates.
"""

from __future__ import annotations

import logging
from typing import Iterator

import grain
import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax.data import codeswitch
from polyglot_jax.data import languages as langs
from polyglot_jax.data import records
from polyglot_jax.data.dataset import (Data, document_weights, held_out_batches, language_rates,
                                       local_batch_size)
from polyglot_jax.errors import DataError


class _Encode(grain.transforms.Map):
  """(content, lang id) → (token ids, lang id[, per-token loss weights]) for a packable record kind.

  Loads SentencePiece lazily so that it pickles into grain's worker processes.
  """

  def __init__(self, model_file: str, kind: str = "text", template: str = "alpaca"):
    self.model_file, self.kind, self.template = model_file, kind, template
    self._processor = None

  def map(self, element):
    if self._processor is None:
      import sentencepiece as spm
      self._processor = spm.SentencePieceProcessor(model_file=self.model_file)
    content, lang_id = element
    from polyglot_jax.data import records
    if not records.get_kind(self.kind).packable:  # Rows are made per record after reading (RecordRowBatches).
      return content, lang_id
    if self.kind == "text":
      return np.asarray(self._processor.encode(content), np.int32), lang_id
    tokens, weights = records.get_kind(self.kind).encode(content, self._processor, self.template)
    if weights is None:
      return np.asarray(tokens, np.int32), lang_id
    return np.asarray(tokens, np.int32), lang_id, np.asarray(weights, np.int32)

  def __getstate__(self):
    return {"model_file": self.model_file, "kind": self.kind, "template": self.template, "_processor": None}


def language_seed(seed: int, lang_id: int) -> int:
  return int(np.random.SeedSequence([seed, lang_id]).generate_state(1)[0])


def host_documents(readers: dict[int, object], doc_weights: dict[int, float], seed: int,
                   process_index: int, process_count: int) -> grain.MapDataset:
  """This host's infinite, indexable stream of (content, lang id): text, or the record kind's content.

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


def stream_opener(documents: grain.MapDataset, encode, read_threads: int, workers: int):
  """position → iterator of (token ids, lang id[, weights]) from that document of the host's stream.

  ``encode`` is an ``_Encode`` (or a SentencePiece model path, for text records).
  """
  if isinstance(encode, str):
    encode = _Encode(encode)

  def open_stream(position: int) -> Iterator[tuple[np.ndarray, int]]:
    ds = documents[position:].map(encode)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(read_threads, 1), prefetch_buffer_size=256))
    if workers > 0:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)

  return open_stream


def make_data(config: ConfigDict, workdir: str) -> Data:
  """The grain backend's ``Data``: streamed, mixed, sharded per host, packed, resumable."""
  from polyglot_jax.data import doc_index, in_memory, stream
  d = config.data
  train_files, eval_files, tokenizer = in_memory.resolve_files(config, workdir)
  processor = in_memory.load_processor(config, tokenizer)
  wanted = tuple(langs.resolve(code) for code in d.languages)
  index, rejected = doc_index.index_documents(train_files, d.language_files, "config.data.train_files", wanted,
                                              kind=d.kind)
  if not index:
    raise DataError("no training documents: set config.data.train_files or config.data.language_files")
  languages = wanted or tuple(sorted(index))
  empty = [code for code in languages if code not in index]
  if empty and d.mixture.method != "weights":
    raise DataError(f"config.data.languages names {empty} but the training files have no text in them")
  readers = {code: doc_index.DocReader(index[code], code, d.kind) for code in languages if code in index}
  sample = {code: [r[i] for i in range(min(len(r), d.size_sample_docs))] for code, r in readers.items()}
  encode = _Encode(tokenizer, d.kind, d.template)
  kind = records.get_kind(d.kind)
  ids = {code: i for i, code in enumerate(languages)}
  options = records.RowOptions(d.packing, d.template, ids)

  def tokens_of(content):
    if kind.packable:
      return encode.map((content, 0))[0]
    made = kind.rows([content], processor, 0, d.seq_len, options)
    return np.flatnonzero(sum(v for k, v in made.items() if k.endswith("segment_ids")).reshape(-1))

  estimate = doc_index.estimate_tokens(sample, {code: len(r) for code, r in readers.items()}, processor,
                                       encode=tokens_of)
  sizes = {code: estimate[code]["tokens"] for code in readers}
  rates = language_rates(config, sizes, languages)
  weights = document_weights(rates, {code: estimate[code]["tokens_per_doc"] for code in readers})
  documents = host_documents({ids[c]: r for c, r in readers.items()},
                                            {ids[c]: w for c, w in weights.items()}, d.shuffle_seed,
                                            jax.process_index(), jax.process_count())
  opener = stream_opener(documents, encode, d.grain_read_threads, d.grain_workers)
  fingerprint = {"backend": "grain", "languages": list(languages), "seq_len": d.seq_len,
                 "global_batch_size": d.global_batch_size, "shuffle_seed": d.shuffle_seed,
                 "documents": {c: len(r) for c, r in readers.items()},
                 "weights": {c: round(w, 12) for c, w in weights.items()}}
  if d.kind != "text":  # Absent for text, so that checkpoints of earlier versions still resume.
    fingerprint["kind"] = d.kind
  # Code-switching (text only) happens as documents leave the stream (stream.py), named by their place in it.
  switcher = codeswitch.from_config(config, processor, languages)
  if kind.packable:
    train = stream.StreamBatches(opener, d.seq_len, local_batch_size(config), processor.bos_id(),
                                 processor.eos_id(), max(processor.pad_id(), 0), fingerprint, d.on_host_change,
                                 packing=d.packing, open_rows=d.open_rows, code_switch=switcher)
  else:
    train = stream.RecordRowBatches(opener, lambda content, lang: kind.rows([content], processor, lang, d.seq_len,
                                                                            options),
                                    local_batch_size(config), fingerprint, d.on_host_change)
  held_out, eval_rejected = held_out_batches(config, eval_files, d.language_eval_files, processor, languages,
                                             kind=d.kind)
  rejected.update(eval_rejected)
  logging.info("grain data: %d languages, %d documents; document weights %s", len(languages),
               sum(len(r) for r in readers.values()), {c: f"{w:.3g}" for c, w in weights.items()})
  return Data(languages, train, held_out, rates, sizes, rejected)
