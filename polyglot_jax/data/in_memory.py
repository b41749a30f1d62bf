"""The packed backend's data in memory: resolve files (or build the demo), read records of the configured kind, make rows per language."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter

import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib
from polyglot_jax.data import codeswitch
from polyglot_jax.data import languages as langs
from polyglot_jax.data import mixing
from polyglot_jax.data import records as records_lib
from polyglot_jax.data.jsonl import expand_files, read_jsonl
from polyglot_jax.data.mixed_batches import ROW_LANG, num_rows
from polyglot_jax.errors import DataError


@dataclasses.dataclass
class TextData:
  processor: object  # sentencepiece.SentencePieceProcessor
  languages: tuple[str, ...]  # lang_id → code
  train_rows: dict[str, np.ndarray]  # Every row holds one language (packed per language).
  eval_rows: dict[str, np.ndarray]  # Likewise.
  rejected: Counter
  train_tokens: dict[str, int]  # Target tokens per language in the training rows.
  rates: dict[str, float]  # Mixture sampling rate per language.
  # Code-switched words in the training rows per (document language, translation language); empty when off.
  switch_counts: Counter = dataclasses.field(default_factory=Counter)


def demo_paths(config: ConfigDict, workdir: str) -> tuple[str, str, str]:
  root = config.data.demo_dir or os.path.join(workdir, "demo_data")
  return os.path.join(root, "train.jsonl"), os.path.join(root, "eval.jsonl"), os.path.join(root, "spm")


def prepare_demo(config: ConfigDict, workdir: str) -> None:
  """Builds the demo corpus and its tokenizer once (process 0), if not there yet."""
  from polyglot_jax.data.demo_corpus import build_demo_corpus
  from polyglot_jax.tokenizer.train import train_sentencepiece
  train_path, _, spm_prefix = demo_paths(config, workdir)
  if jax.process_index() == 0:
    if not os.path.exists(train_path):
      logging.info("building the demo corpus in %s", os.path.dirname(train_path))
      build_demo_corpus(os.path.dirname(train_path))
    if not os.path.exists(spm_prefix + ".model"):
      logging.info("training a %d-piece SentencePiece tokenizer", config.model.vocab_size)
      records, _ = read_jsonl([train_path])
      train_sentencepiece(records, spm_prefix, config.model.vocab_size)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("demo corpus ready")


def resolve_files(config: ConfigDict, workdir: str) -> tuple[list[str], list[str], str]:
  """(train files, eval files, tokenizer path) of data.source; builds the demo corpus if asked for."""
  d = config.data
  if d.source == "demo":
    prepare_demo(config, workdir)
    train_path, eval_path, spm_prefix = demo_paths(config, workdir)
    return [train_path], [eval_path], d.tokenizer or spm_prefix + ".model"
  if not d.train_files and not (d.backend != "packed" and (d.language_files or d.tfds_name)):
    raise DataError("config.data.train_files is empty; point it at JSONL files of {\"text\", \"lang\"} records")
  train_files = expand_files(d.train_files, "config.data.train_files") if d.train_files else []
  eval_files = expand_files(d.eval_files, "config.data.eval_files") if d.eval_files else []
  return train_files, eval_files, d.tokenizer


def load_processor(config: ConfigDict, tokenizer: str):
  """The SentencePiece model, checked against the model's vocabulary size before anything is compiled."""
  import sentencepiece as spm
  if not tokenizer or not os.path.isfile(tokenizer):
    raise DataError(f"tokenizer '{tokenizer}' does not exist; set config.data.tokenizer to a SentencePiece .model file")
  processor = spm.SentencePieceProcessor(model_file=tokenizer)
  if processor.vocab_size() > config.model.vocab_size:
    raise DataError(
        f"tokenizer '{tokenizer}' has {processor.vocab_size()} pieces but config.model.vocab_size="
        f"{config.model.vocab_size}; set model.vocab_size to at least {processor.vocab_size()}")
  return processor


def load_text_data(config: ConfigDict, workdir: str) -> TextData:
  """Reads, validates and packs the training and held-out records (of ``config.data.kind``) per language."""
  d = config.data
  train_files, eval_files, tokenizer = resolve_files(config, workdir)
  if not train_files:
    raise DataError("config.data.train_files is empty; the packed backend reads JSONL files of {\"text\", \"lang\"} records")
  processor = load_processor(config, tokenizer)
  train_records, rejected = records_lib.read_records(train_files, d.kind)
  if not train_records:
    raise DataError(f"no usable '{d.kind}' records in {', '.join(train_files)} ({_rejections(rejected)}); "
                    f"point config.data.train_files at JSONL files of {list(records_lib.get_kind(d.kind).keys)} records")
  eval_records, eval_rejected = records_lib.read_records(eval_files, d.kind) if eval_files else ([], Counter())
  rejected.update(eval_rejected)
  kind = records_lib.get_kind(d.kind)
  # Dictionary records hold words of several languages; each needs a language id.
  inside = set().union(*(kind.content_languages(c) for c, _ in train_records + eval_records))
  if d.languages:
    languages = tuple(langs.resolve(code) for code in d.languages)
  else:
    languages = tuple(sorted({lang for _, lang in train_records} | inside))
  ids = {code: i for i, code in enumerate(languages)}
  missing = sorted(({lang for _, lang in train_records + eval_records} | inside) - set(ids))
  if missing:
    raise DataError(f"the data has languages {missing} that config.data.languages={list(d.languages)} does not list; add them")
  empty = [code for code in languages if not any(lang == code for _, lang in train_records) and code not in inside]
  if empty and d.mixture.method != "weights":
    raise DataError(f"config.data.languages names {empty} but the training files have no text in them")
  # Records are packed one language at a time, so each row is one language: the
  # mixture then picks rows by language, and held-out metrics split cleanly.
  # Held-out rows stay natural text: only the training rows are code-switched.
  options = records_lib.RowOptions(d.packing, d.template, ids)
  switcher = codeswitch.from_config(config, processor, languages)
  train_options = records_lib.RowOptions(d.packing, d.template, ids, switcher)
  train_rows = pack_by_language(train_records, processor, ids, languages, d.seq_len, 0, d.kind, train_options)
  eval_rows = pack_by_language(eval_records, processor, ids, languages, d.seq_len, d.eval_max_rows, d.kind, options)
  if switcher is not None:
    logging.info("code-switching in the training rows: %s", codeswitch.summary(train_options.switch_counts))
  row_lang = train_rows[ROW_LANG]
  weights = _row_weights(train_rows)
  train_tokens = {code: int(weights[row_lang == i].sum()) for i, code in enumerate(languages)}
  run_tokens = config_lib.resolve_steps(config) * d.global_batch_size * d.seq_len
  try:
    rates = mixing.rates_from_config(d.mixture, train_tokens, run_tokens)
  except (mixing.MixtureError, langs.UnknownLanguageError) as e:
    raise DataError(f"config.data.mixture: {e}") from None
  logging.info("data: %d languages, %d training rows, %d held-out rows of %d tokens (kind %s, packing %s)",
               len(languages), num_rows(train_rows), num_rows(eval_rows), d.seq_len, d.kind, d.packing)
  return TextData(processor, languages, train_rows, eval_rows, rejected, train_tokens, rates,
                  train_options.switch_counts)


def _rejections(rejected: Counter) -> str:
  return "; ".join(f"{n} {reason}" for reason, n in rejected.most_common()) or "the files are empty"


def _row_weights(rows: dict[str, np.ndarray]) -> np.ndarray:
  """Target tokens per row, summed over every *loss_weights field of the kind."""
  return sum(v.sum(axis=1) for k, v in rows.items() if k.endswith("loss_weights"))


def pack_by_language(records, processor, ids, languages, seq_len: int, max_rows: int, kind: str = "text",
                     options=None) -> dict[str, np.ndarray]:
  """Rows of each language in turn (``max_rows`` caps each; 0: all), with ``ROW_LANG`` per row."""
  kind_obj = records_lib.get_kind(kind)
  options = options or records_lib.RowOptions("greedy", "alpaca", ids)
  parts = []
  for code in languages:
    part = kind_obj.rows([c for c, lang in records if lang == code], processor, ids[code], seq_len, options)
    if max_rows:
      part = {k: v[:max_rows] for k, v in part.items()}
    part[ROW_LANG] = np.full(num_rows(part), ids[code], np.int32)
    parts.append(part)
  if not parts:
    return {}
  rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return rows if num_rows(rows) else {}
