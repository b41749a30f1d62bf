"""What every backend returns (``Data``), and the helpers the streaming backends share.

``Data.train`` yields this host's batches as dicts of the record kind's
fields (``records.get_kind(config.data.kind).fields``), each [local rows, ...].
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax.data import in_memory, mixing
from polyglot_jax.data import records as records_lib
from polyglot_jax.data import languages as langs
from polyglot_jax.data.mixed_batches import eval_batches
from polyglot_jax.errors import DataError


@dataclasses.dataclass
class Data:
  languages: tuple[str, ...]  # lang id → code
  train: object  # Iterator of local batches with get_state() / set_state().
  held_out: list[dict[str, np.ndarray]]  # This host's slice of the held-out batches.
  rates: dict[str, float]  # Share of training tokens per language.
  sizes: dict[str, float]  # Tokens per language in the training data (estimated for grain/seqio).
  rejected: Counter  # Records rejected while reading, by reason.


def run_tokens(config: ConfigDict) -> int:
  return config_lib.resolve_steps(config) * config.data.global_batch_size * config.data.seq_len


def local_batch_size(config: ConfigDict) -> int:
  count = jax.process_count()
  if config.data.global_batch_size % count:
    raise DataError(f"data.global_batch_size={config.data.global_batch_size} is not divisible by the {count} processes")
  return config.data.global_batch_size // count


def document_weights(rates: dict[str, float], tokens_per_doc: dict[str, float]) -> dict[str, float]:
  """Document sampling weights that give each language its share of tokens."""
  return {lang: rate / tokens_per_doc[lang] for lang, rate in rates.items() if rate > 0}


def language_rates(config: ConfigDict, sizes: dict[str, float], languages) -> dict[str, float]:
  try:
    rates = mixing.rates_from_config(config.data.mixture, sizes, run_tokens(config))
  except (mixing.MixtureError, langs.UnknownLanguageError) as e:
    raise DataError(f"config.data.mixture: {e}") from None
  return {code: float(rates.get(code, 0.0)) for code in languages}


def held_out_batches(config: ConfigDict, eval_files, language_eval_files, processor, languages, kind: str = "text"):
  """Held-out records packed one language at a time, in fixed batches (small: read into memory)."""
  from polyglot_jax.data import doc_index
  d = config.data
  if not eval_files and not language_eval_files:
    return [], Counter()
  index, rejected = doc_index.index_documents(eval_files, language_eval_files, "config.data.eval_files", languages,
                                              kind=kind)
  records = []
  for code, where in index.items():
    reader = doc_index.DocReader(where, code, kind)
    records.extend((reader[i], code) for i in range(len(reader)))
  ids = {code: i for i, code in enumerate(languages)}
  options = records_lib.RowOptions(d.packing, d.template, ids)
  rows = in_memory.pack_by_language(records, processor, ids, languages, d.seq_len, d.eval_max_rows, kind, options)
  if not rows:
    return [], rejected
  return eval_batches(rows, d.global_batch_size, jax.process_index(), jax.process_count()), rejected
