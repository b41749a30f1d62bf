"""seqio backend: a tiny TFDS dataset built locally, local files of every format, exact resume."""

import json

import numpy as np
import pytest

from conftest import batches_equal as _equal, take_batches as _take, tiny_config
from polyglot_jax.data import backends, seqio_tasks
from polyglot_jax.data.packing import FIELDS

tfds = pytest.importorskip("tensorflow_datasets")
import tensorflow as tf  # noqa: E402

LANGS = ("deu", "eng", "swa")
MC4 = {"deu": "de", "eng": "en", "swa": "sw"}


def _text(lang, split, i):
  return f"{lang} {split} document {i} " + " ".join(f"w{j}" for j in range(i % 7 + 1))


class PolyglotTinyMc4(tfds.core.GeneratorBasedBuilder):
  """A local stand-in for c4/multilingual: per-language splits `<code>` and `<code>-validation`."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    splits = {}
    for lang, code in MC4.items():
      splits[code] = self._generate_examples(lang, "train", 40)
      splits[f"{code}-validation"] = self._generate_examples(lang, "validation", 6)
    return splits

  def _generate_examples(self, lang, split, n):
    for i in range(n):
      yield f"{lang}-{split}-{i}", {"text": _text(lang, split, i)}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds.disable_progress_bar()
  root = tmp_path_factory.mktemp("tfds")
  PolyglotTinyMc4(data_dir=str(root)).download_and_prepare()
  return str(root)


def _config(demo_data, **kw):
  values = dict(data__backend="seqio", data__train_files=(), data__eval_files=(), data__languages=LANGS,
                data__tfds_name="polyglot_tiny_mc4:1.0.0", data__seq_len=32, data__global_batch_size=4,
                data__mixture__method="proportional", data__eval_max_rows=0)
  values.update(kw)
  return tiny_config(demo_data, **values)


def _documents(batches, processor):
  """Decoded whole documents of packed rows (segments from bos to eos, not cut by a row end)."""
  texts = []
  for batch in batches:
    for row, targets, seg in zip(batch["inputs"], batch["targets"], batch["segment_ids"]):
      for s in np.unique(seg[seg > 0]):
        ids, out = row[seg == s], targets[seg == s]
        if ids[0] == processor.bos_id() and out[-1] == processor.eos_id():
          texts.append(processor.decode(ids[1:].tolist()))
  return texts


def test_tfds_tasks_mixture_and_resume(demo_data, tfds_dir, tmp_path):
  import sentencepiece as spm
  config = _config(demo_data, data__tfds_data_dir=tfds_dir)
  data = backends.make_data(config, str(tmp_path))
  assert data.languages == LANGS
  whole = _take(data.train, 10)
  # Whole documents come back token for token (SentencePieceVocabulary == sentencepiece).
  processor = spm.SentencePieceProcessor(model_file=demo_data["tokenizer"])
  every = {_text(lang, "train", i) for lang in LANGS for i in range(40)}
  decoded = _documents(whole, processor)
  assert len(decoded) > 20 and all(d in every for d in decoded)
  langs_seen = {int(x) for b in whole for x in np.unique(b["lang_ids"][b["loss_weights"] > 0])}
  assert langs_seen == {0, 1, 2}
  # Held-out: the validation splits, one language per row.
  held = data.held_out
  assert held and all(len(set(b["lang_ids"][i][b["loss_weights"][i] > 0])) <= 1
                      for b in held for i in range(len(b["inputs"])))
  # Resume.
  first = backends.make_data(config, str(tmp_path)).train
  head = _take(first, 4)
  state = json.loads(json.dumps(first.get_state()))
  second = backends.make_data(config, str(tmp_path)).train
  second.set_state(state)
  assert _equal(head + _take(second, 6), whole)


def test_local_files_of_every_format(demo_data, tmp_path):
  (tmp_path / "deu.txt").write_text("".join(_text("deu", "train", i) + "\n\n" for i in range(12)))
  with tf.io.TFRecordWriter(str(tmp_path / "eng.tfrecord")) as w:
    for i in range(12):
      feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_text("eng", "train", i).encode()]))}
      w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  (tmp_path / "swa.jsonl").write_text("".join(json.dumps({"text": _text("swa", "train", i)}) + "\n"
                                              for i in range(12)) + "not json\n")
  from polyglot_jax.data.doc_index import write_array_record
  write_array_record(str(tmp_path / "swa_eval.arrayrecord"), [{"text": _text("swa", "validation", i)} for i in range(3)])
  config = _config(demo_data, data__tfds_name="", data__language_files=(
      ("deu", str(tmp_path / "deu.txt")), ("eng", str(tmp_path / "eng.tfrecord")), ("swa", str(tmp_path / "swa.jsonl"))),
      data__language_eval_files=(("swa", str(tmp_path / "swa_eval.arrayrecord")),))
  data = backends.make_data(config, str(tmp_path))
  assert data.rejected == {"malformed JSON": 1}
  # Every language's documents are counted (12 each) before the mixture is made.
  tokens_per_doc = {lang: data.sizes[lang] / 12 for lang in LANGS}
  assert all(3 < t < 40 for t in tokens_per_doc.values())
  batches = _take(data.train, 6)
  assert {int(x) for b in batches for x in np.unique(b["lang_ids"][b["loss_weights"] > 0])} == {0, 1, 2}
  # Only Swahili has held-out text.
  assert {int(x) for b in data.held_out for x in np.unique(b["lang_ids"][b["loss_weights"] > 0])} == {2}


def test_tfds_sources_follow_mc4_and_wiki40b_names():
  c4 = seqio_tasks.tfds_source("c4/multilingual:3.1.0", "swa", "")
  assert set(c4.splits) == {"train", "validation"}
  assert c4.tfds_dataset.name == "c4/multilingual:3.1.0"
  assert {k: str(v) for k, v in c4.tfds_dataset._split_map.items()} == {"train": "sw", "validation": "sw-validation"}
  wiki = seqio_tasks.tfds_source("wiki40b:1.3.0", "zho", "")
  assert wiki.tfds_dataset.name == "wiki40b/zh-cn:1.3.0"
  with pytest.raises(Exception, match="wiki40b has no 'swa'"):
    seqio_tasks.tfds_source("wiki40b:1.3.0", "swa", "")
