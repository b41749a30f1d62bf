"""One entry point from config to batches, whichever backend (config.data.backend) reads the data.

All backends give the trainer the same things: the languages (their order
is the lang id), a resumable iterator of this host's batches with fields
``packing.FIELDS``, fixed held-out batches, and the mixture rates with the
language sizes they came from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax.data import languages as langs
from polyglot_jax.data import mixing, pipeline, sources
from polyglot_jax.data.pipeline import DataError


@dataclasses.dataclass
class Data:
  languages: tuple[str, ...]  # lang id → code
  train: object  # Iterator of local batches with get_state() / set_state().
  held_out: list[dict[str, np.ndarray]]  # This host's slice of the held-out batches.
  rates: dict[str, float]  # Share of training tokens per language.
  sizes: dict[str, float]  # Tokens per language in the training data (estimated for grain/seqio).
  rejected: Counter  # Records rejected while reading, by reason.


def make_data(config: ConfigDict, workdir: str) -> Data:
  backend = config.data.backend
  if backend == "packed":
    return _packed(config, workdir)
  if backend == "grain":
    return _grain(config, workdir)
  if backend == "seqio":
    from polyglot_jax.data import seqio_tasks
    return seqio_tasks.make_data(config, workdir)
  raise DataError(f"config.data.backend='{backend}'; use packed, grain or seqio")


def run_tokens(config: ConfigDict) -> int:
  return config_lib.resolve_steps(config) * config.data.global_batch_size * config.data.seq_len


def _packed(config: ConfigDict, workdir: str) -> Data:
  d = config.data
  text = sources.load_text_data(config, workdir)
  train = pipeline.PackedBatches(text.train_rows, [text.rates[lang] for lang in text.languages],
                                 d.global_batch_size, d.shuffle_seed, jax.process_index(), jax.process_count())
  held_out = pipeline.eval_batches(text.eval_rows, d.global_batch_size, jax.process_index(),
                                   jax.process_count()) if text.eval_rows else []
  return Data(text.languages, train, held_out, text.rates, text.train_tokens, text.rejected)


def local_batch_size(config: ConfigDict) -> int:
  count = jax.process_count()
  if config.data.global_batch_size % count:
    raise DataError(f"data.global_batch_size={config.data.global_batch_size} is not divisible by the {count} processes")
  return config.data.global_batch_size // count


def document_weights(rates: dict[str, float], tokens_per_doc: dict[str, float]) -> dict[str, float]:
  """Document sampling weights that give each language its share of tokens."""
  return {lang: rate / tokens_per_doc[lang] for lang, rate in rates.items() if rate > 0}


def _grain(config: ConfigDict, workdir: str) -> Data:
  from polyglot_jax.data import doc_sources, grain_pipeline, stream
  d = config.data
  train_files, eval_files, tokenizer = sources.resolve_files(config, workdir)
  processor = sources.load_processor(config, tokenizer)
  wanted = tuple(langs.resolve(code) for code in d.languages)
  index, rejected = doc_sources.index_documents(train_files, d.language_files, "config.data.train_files", wanted)
  if not index:
    raise DataError("no training documents: set config.data.train_files or config.data.language_files")
  languages = wanted or tuple(sorted(index))
  empty = [code for code in languages if code not in index]
  if empty and d.mixture.method != "weights":
    raise DataError(f"config.data.languages names {empty} but the training files have no text in them")
  readers = {code: doc_sources.DocReader(index[code], code) for code in languages if code in index}
  sample = {code: [r[i] for i in range(min(len(r), d.size_sample_docs))] for code, r in readers.items()}
  estimate = doc_sources.estimate_tokens(sample, {code: len(r) for code, r in readers.items()}, processor)
  sizes = {code: estimate[code]["tokens"] for code in readers}
  rates = language_rates(config, sizes, languages)
  weights = document_weights(rates, {code: estimate[code]["tokens_per_doc"] for code in readers})
  ids = {code: i for i, code in enumerate(languages)}
  documents = grain_pipeline.host_documents({ids[c]: r for c, r in readers.items()},
                                            {ids[c]: w for c, w in weights.items()}, d.shuffle_seed,
                                            jax.process_index(), jax.process_count())
  opener = grain_pipeline.stream_opener(documents, tokenizer, d.grain_read_threads, d.grain_workers)
  fingerprint = {"backend": "grain", "languages": list(languages), "seq_len": d.seq_len,
                 "global_batch_size": d.global_batch_size, "shuffle_seed": d.shuffle_seed,
                 "documents": {c: len(r) for c, r in readers.items()},
                 "weights": {c: round(w, 12) for c, w in weights.items()}}
  train = stream.StreamBatches(opener, d.seq_len, local_batch_size(config), processor.bos_id(), processor.eos_id(),
                               max(processor.pad_id(), 0), fingerprint, d.on_host_change)
  held_out, eval_rejected = held_out_batches(config, eval_files, d.language_eval_files, processor, languages)
  rejected.update(eval_rejected)
  logging.info("grain data: %d languages, %d documents; document weights %s", len(languages),
               sum(len(r) for r in readers.values()), {c: f"{w:.3g}" for c, w in weights.items()})
  return Data(languages, train, held_out, rates, sizes, rejected)


def language_rates(config: ConfigDict, sizes: dict[str, float], languages) -> dict[str, float]:
  try:
    rates = mixing.rates_from_config(config.data.mixture, sizes, run_tokens(config))
  except (mixing.MixtureError, langs.UnknownLanguageError) as e:
    raise DataError(f"config.data.mixture: {e}") from None
  return {code: float(rates.get(code, 0.0)) for code in languages}


def held_out_batches(config: ConfigDict, eval_files, language_eval_files, processor, languages):
  """Held-out text packed one language at a time, in fixed batches (small: read into memory)."""
  from polyglot_jax.data import doc_sources
  d = config.data
  if not eval_files and not language_eval_files:
    return [], Counter()
  index, rejected = doc_sources.index_documents(eval_files, language_eval_files, "config.data.eval_files", languages)
  records = []
  for code, where in index.items():
    reader = doc_sources.DocReader(where, code)
    records.extend((reader[i], code) for i in range(len(reader)))
  ids = {code: i for i, code in enumerate(languages)}
  rows = sources.pack_by_language(records, processor, ids, languages, d.seq_len, d.eval_max_rows)
  if not rows:
    return [], rejected
  return pipeline.eval_batches(rows, d.global_batch_size, jax.process_index(), jax.process_count()), rejected

