"""seqio backend: a Task per language, a Mixture at the configured rates, packing as everywhere else.

Sources of a language's task (``polyglot.<name>.<lang>``):

- TFDS (``data.tfds_name``): ``c4/multilingual`` with the language's split and
  ``<split>-validation`` held out, as mT5 reads mC4; ``wiki40b`` with
  ``wiki40b/<code>`` train/validation. Any other TFDS name is read the
  c4/multilingual way (per-language splits named by the mC4 code), which
  is how a locally built dataset plugs in.
- Local files (``data.language_files`` / ``data.train_files``): ``.txt`` (one
  document per line), ``.tfrecord`` (tf.train.Example with a "text" bytes
  feature), ``.jsonl`` and ``.arrayrecord`` ({"text", "lang"} records,
  validated and indexed once, rejects counted with their line numbers).

Each task tokenizes "text" into ``targets`` with a ``seqio.SentencePieceVocabulary``
and adds ``lang_ids``. The Mixture samples documents with weights = token
rate / mean document length. Packing (segment_ids, positions, per-token
lang_ids) is the shared ``stream.StreamBatches``, so batches have exactly
the fields of the other dataset; code-switching (``config.data.code_switch``)
is applied there too, as documents leave the stream. Held-out perplexity uses
the same tasks' validation splits, one language at a time.

Resume: tf.data pipelines are deterministic given the seed; a host's state
is how many documents of its stream it has packed (plus the offset inside
the next one), and a restored run skips that many. Skipping re-reads the
skipped documents (without tokenizing them again in Python), so resume cost
grows with the documents a host has consumed — at pretraining scale prefer
the grain backend, whose resume is O(1).
"""

from __future__ import annotations

import logging
from collections import Counter

import jax
import numpy as np
from ml_collections import ConfigDict

from polyglot_jax.data import codeswitch, dataset, doc_index
from polyglot_jax.data import languages as langs
from polyglot_jax.data import in_memory
from polyglot_jax.data.jsonl import DataError, expand_files

# ISO 639-3 → wiki40b config name (the 41 wiki40b languages).
WIKI40B = {
    "eng": "en", "ara": "ar", "bul": "bg", "cat": "ca", "ces": "cs", "dan": "da", "deu": "de", "ell": "el",
    "spa": "es", "est": "et", "fas": "fa", "fin": "fi", "fra": "fr", "heb": "he", "hin": "hi", "hrv": "hr",
    "hun": "hu", "ind": "id", "ita": "it", "jpn": "ja", "kor": "ko", "lit": "lt", "lav": "lv", "msa": "ms",
    "nld": "nl", "nor": "no", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl",
    "srp": "sr", "swe": "sv", "tha": "th", "fil": "tl", "tur": "tr", "ukr": "uk", "vie": "vi", "zho": "zh-cn",
}
LOCAL_FORMATS = (".txt", ".tfrecord", ".jsonl") + doc_index.ARRAY_RECORD_SUFFIXES


class _QuietUncachedWarning(logging.Filter):
  """seqio warns that uncached function sources reshuffle on restart; our restarts resume exactly instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUncachedWarning())


def _tf():
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; accelerators belong to JAX.
  return tf


def task_name(prefix: str, lang: str) -> str:
  return f"polyglot.{prefix}.{lang}"


def tfds_source(tfds_name: str, lang: str, data_dir: str):
  """The seqio source of one language in a TFDS dataset (c4/multilingual layout or wiki40b)."""
  import seqio
  name, _, version = tfds_name.partition(":")
  if name == "wiki40b":
    if lang not in WIKI40B:
      raise DataError(f"wiki40b has no '{lang}'; it has {sorted(WIKI40B)}")
    full = f"wiki40b/{WIKI40B[lang]}" + (f":{version}" if version else "")
    return seqio.TfdsDataSource(full, tfds_data_dir=data_dir or None,
                                splits={"train": "train", "validation": "validation"})
  split = langs.get(lang).tfds_name or lang
  return seqio.TfdsDataSource(tfds_name, tfds_data_dir=data_dir or None,
                              splits={"train": split, "validation": f"{split}-validation"})


class _LocalLanguage:
  """A language's local files (train and held-out), each format read its own way."""

  def __init__(self, lang: str, train: list[str], held_out: list[str], indexes: dict[str, doc_index.LanguageIndex]):
    self.lang = lang
    self.files = {"train": train, "validation": held_out}
    self.indexes = indexes  # split → index of the .jsonl/.arrayrecord records (already validated).

  def dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None):
    tf = _tf()
    files = self.files.get(split, [])
    parts = []
    plain = [f for f in files if f.endswith(".txt")]
    if plain:
      ds = tf.data.TextLineDataset(plain)
      parts.append(ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0))
    records = [f for f in files if f.endswith(".tfrecord")]
    if records:
      spec = {"text": tf.io.FixedLenFeature([], tf.string)}
      parts.append(tf.data.TFRecordDataset(records).map(lambda x: tf.io.parse_single_example(x, spec)["text"]))
    index = self.indexes.get(split)
    if index is not None and len(index):
      reader = doc_index.DocReader(index, self.lang)

      def texts():  # In blocks: one Python → TF crossing per block, not per document.
        for start in range(0, len(reader), 256):
          yield [reader[i].encode("utf-8") for i in range(start, min(len(reader), start + 256))]

      blocks = tf.data.Dataset.from_generator(texts, output_signature=tf.TensorSpec([None], tf.string))
      parts.append(blocks.unbatch())
    if not parts:
      raise DataError(f"language '{self.lang}' has no {split} files")
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds.map(lambda text: {"text": text})

  def count(self, split: str) -> int:
    tf = _tf()
    n = len(self.indexes[split]) if split in self.indexes else 0
    for f in self.files.get(split, []):
      if f.endswith(".txt"):
        with open(f, "rb") as handle:
          n += sum(1 for line in handle if line.strip())
      elif f.endswith(".tfrecord"):
        n += sum(1 for _ in tf.data.TFRecordDataset([f]))
    return n


def _local_languages(config: ConfigDict, train_files, eval_files, languages) -> tuple[dict, Counter]:
  d = config.data
  rejected: Counter = Counter()
  by_lang: dict[str, dict[str, list[str]]] = {}

  def add(items, split):
    for code, pattern in items:
      code = langs.resolve(code)
      for f in expand_files([pattern], f"language_files entry for '{code}'"):
        if not f.endswith(LOCAL_FORMATS):
          raise DataError(f"{f}: unknown format; the seqio backend reads {', '.join(LOCAL_FORMATS)}")
        by_lang.setdefault(code, {"train": [], "validation": []})[split].append(f)

  add(d.language_files, "train")
  add(d.language_eval_files, "validation")
  indexes: dict[str, dict[str, doc_index.LanguageIndex]] = {}
  for split, mixed, per_lang in (("train", train_files, d.language_files),
                                 ("validation", eval_files, d.language_eval_files)):
    json_like = [(c, p) for c, p in per_lang if p.endswith((".jsonl",) + doc_index.ARRAY_RECORD_SUFFIXES)]
    if not mixed and not json_like:
      continue
    index, bad = doc_index.index_documents(mixed, json_like, f"config.data.{'train' if split == 'train' else 'eval'}_files",
                                             languages)
    rejected.update(bad)
    for code, where in index.items():
      indexes.setdefault(code, {})[split] = where
      by_lang.setdefault(code, {"train": [], "validation": []})
  out = {}
  for code, files in by_lang.items():
    keep = lambda fs: [f for f in fs if not f.endswith((".jsonl",) + doc_index.ARRAY_RECORD_SUFFIXES)]
    out[code] = _LocalLanguage(code, keep(files["train"]), keep(files["validation"]), indexes.get(code, {}))
  return out, rejected


def register_tasks(config: ConfigDict, languages, tokenizer: str, local: dict, prefix: str) -> dict[str, str]:
  """Registers (or re-registers) one seqio Task per language; returns language → task name."""
  import seqio
  tf = _tf()
  d = config.data
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  features = {"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
              "lang_ids": seqio.Feature(seqio.PassThroughVocabulary(len(languages)), add_eos=False, dtype=tf.int32)}
  names = {}
  for lang_id, lang in enumerate(languages):
    if d.tfds_name:
      source = tfds_source(d.tfds_name, lang, d.tfds_data_dir)
    elif lang in local:
      splits = [s for s in ("train", "validation") if local[lang].files[s] or s in local[lang].indexes]
      source = seqio.FunctionDataSource(local[lang].dataset_fn, splits=splits)
    else:
      continue
    name = task_name(prefix, lang)
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)

    def add_lang_ids(ds, lang_id=lang_id):
      return ds.map(lambda ex: {**ex, "lang_ids": tf.fill(tf.shape(ex["targets"]), lang_id)})

    def to_targets(ds):
      return ds.map(lambda ex: {"targets": ex["text"]})

    def non_empty(ds):
      return ds.filter(lambda ex: tf.size(ex["targets"]) > 0)

    seqio.TaskRegistry.add(name, source=source, output_features=features,
                           preprocessors=[to_targets, seqio.preprocessors.tokenize, non_empty, add_lang_ids])
    names[lang] = name
  return names


def register_mixture(name: str, task_weights: dict[str, float]):
  import seqio
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(task_weights.items()))


def _documents(task_or_mixture, split: str, shuffle: bool, seed: int, shard: tuple[int, int], epochs):
  import seqio
  ds = task_or_mixture.get_dataset(sequence_length=None, split=split, use_cached=False, shuffle=shuffle,
                                   seed=seed, shard_info=seqio.ShardInfo(index=shard[0], num_shards=shard[1]),
                                   num_epochs=epochs, trim_output_features=False)
  return ds


def make_data(config: ConfigDict, workdir: str) -> dataset.Data:
  from polyglot_jax import quiet
  with quiet.tensorflow_logs():  # TensorFlow's start-up lines read like failures; load it quietly once.
    _tf()
    import seqio
  from polyglot_jax.data import stream
  d = config.data
  train_files, eval_files, tokenizer = in_memory.resolve_files(config, workdir)
  processor = in_memory.load_processor(config, tokenizer)
  wanted = tuple(langs.resolve(code) for code in d.languages)
  local, rejected = ({}, Counter()) if d.tfds_name else _local_languages(config, train_files, eval_files, wanted)
  if d.tfds_name and not wanted:
    raise DataError(f"config.data.tfds_name='{d.tfds_name}' needs config.data.languages (the languages to read)")
  languages = wanted or tuple(sorted(local))
  if not languages:
    raise DataError("no training data: set config.data.tfds_name, config.data.language_files or config.data.train_files")
  prefix = "tfds" if d.tfds_name else "local"
  tasks = register_tasks(config, languages, tokenizer, local, prefix)
  missing = [code for code in languages if code not in tasks]
  if missing and d.mixture.method != "weights":
    raise DataError(f"config.data.languages names {missing} but no file gives text in them")

  # Sizes: documents per language × mean tokens per document on a sample.
  sizes, per_doc = {}, {}
  for lang, name in tasks.items():
    task = seqio.get_mixture_or_task(name)
    docs = _num_documents(config, lang, local)
    sample = _documents(task, "train", False, 0, (0, 1), 1).take(d.size_sample_docs)
    lengths = [len(ex["targets"]) + 1 for ex in sample.as_numpy_iterator()]
    if not lengths:
      raise DataError(f"seqio task {name} yields no documents; check its files or TFDS split")
    per_doc[lang] = float(np.mean(lengths))
    sizes[lang] = per_doc[lang] * docs
  rates = dataset.language_rates(config, sizes, languages)
  weights = dataset.document_weights(rates, per_doc)
  mixture = register_mixture(f"polyglot.{prefix}.mixture", {tasks[c]: w for c, w in weights.items()})
  shard = (jax.process_index(), jax.process_count())

  def open_stream(position: int):
    ds = _documents(mixture, "train", True, d.shuffle_seed, shard, None).skip(position)
    for ex in ds.as_numpy_iterator():
      yield ex["targets"], int(ex["lang_ids"][0])

  fingerprint = {"backend": "seqio", "languages": list(languages), "seq_len": d.seq_len,
                 "global_batch_size": d.global_batch_size, "shuffle_seed": d.shuffle_seed,
                 "tfds_name": d.tfds_name, "weights": {c: round(w, 12) for c, w in weights.items()}}
  # Code-switching happens as documents leave the stream (stream.py), named by their place in it.
  switcher = codeswitch.from_config(config, processor, languages)
  train = stream.StreamBatches(open_stream, d.seq_len, dataset.local_batch_size(config), processor.bos_id(),
                               processor.eos_id(), max(processor.pad_id(), 0), fingerprint, d.on_host_change,
                               packing=d.packing, open_rows=d.open_rows, code_switch=switcher)
  held_out = _held_out(config, tasks, languages, processor)
  logging.info("seqio data: tasks %s; document weights %s", sorted(tasks.values()),
               {c: f"{w:.3g}" for c, w in weights.items()})
  return dataset.Data(languages, train, held_out, rates, sizes, rejected)


def _num_documents(config: ConfigDict, lang: str, local: dict) -> int:
  d = config.data
  if lang in local:
    return local[lang].count("train")
  import tensorflow_datasets as tfds
  name, _, _ = d.tfds_name.partition(":")
  if name == "wiki40b":
    builder = tfds.builder(f"wiki40b/{WIKI40B[lang]}", data_dir=d.tfds_data_dir or None)
    return builder.info.splits["train"].num_examples
  builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir or None)
  return builder.info.splits[langs.get(lang).tfds_name or lang].num_examples


def _held_out(config: ConfigDict, tasks: dict[str, str], languages, processor) -> list[dict[str, np.ndarray]]:
  """Per-language validation splits of the same tasks, packed one language at a time."""
  import seqio
  from polyglot_jax.data.mixed_batches import eval_batches
  from polyglot_jax.data.packing import FIELDS, pack_documents
  d = config.data
  parts = []
  for lang, name in tasks.items():
    task = seqio.get_mixture_or_task(name)
    if "validation" not in task.splits:
      continue
    docs = ((ex["targets"], int(ex["lang_ids"][0]))
            for ex in _documents(task, "validation", False, 0, (0, 1), 1).as_numpy_iterator())
    rows = pack_documents(docs, d.seq_len, processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0))
    if d.eval_max_rows:
      rows = {k: v[:d.eval_max_rows] for k, v in rows.items()}
    if len(rows["inputs"]):
      parts.append(rows)
  if not parts:
    return []
  rows = {k: np.concatenate([p[k] for p in parts]) for k in FIELDS}
  return eval_batches(rows, d.global_batch_size, jax.process_index(), jax.process_count())

