"""Packing, the resumable batch iterator, JSONL reading and bad input."""

import json

import numpy as np
import pytest

from polyglot_jax.data import languages
from polyglot_jax.data.packing import pack_documents
from polyglot_jax.data.pipeline import DataError, PackedBatches, read_jsonl


def test_packing_fields():
  rows = pack_documents([([10, 11, 12], 0), ([20, 21], 1), ([30] * 9, 2)], seq_len=8, bos_id=2, eos_id=3)
  # Doc 1 → inputs [2,10,11,12] targets [10,11,12,3]; doc 2 → [2,20,21]/[20,21,3]; both fit in row 0.
  np.testing.assert_array_equal(rows["inputs"][0], [2, 10, 11, 12, 2, 20, 21, 0])
  np.testing.assert_array_equal(rows["targets"][0], [10, 11, 12, 3, 20, 21, 3, 0])
  np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
  np.testing.assert_array_equal(rows["loss_weights"][0], [1, 1, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(rows["lang_ids"][0], [0, 0, 0, 0, 1, 1, 1, 0])
  # Doc 3 has 10 inputs: cut into 8 + 2, each piece its own segment.
  np.testing.assert_array_equal(rows["segment_ids"][1], [1] * 8)
  np.testing.assert_array_equal(rows["segment_ids"][2], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(rows["targets"][2][:2], [30, 3])
  assert (rows["lang_ids"][1] == 2).all()


def _rows(n, seq_len=4):
  base = np.arange(n * seq_len, dtype=np.int32).reshape(n, seq_len)
  return {k: base.copy() for k in ("inputs", "targets", "loss_weights", "segment_ids", "positions", "lang_ids")}


def test_batches_are_deterministic_and_resume_exactly():
  it = PackedBatches(_rows(10), global_batch_size=4, seed=3)
  straight = [next(it)["inputs"] for _ in range(7)]
  resumed = PackedBatches(_rows(10), global_batch_size=4, seed=3)
  for _ in range(3):
    next(resumed)
  state = resumed.get_state()
  again = PackedBatches(_rows(10), global_batch_size=4, seed=3)
  again.set_state(json.loads(json.dumps(state)))
  for i in range(3, 7):
    np.testing.assert_array_equal(next(again)["inputs"], straight[i])


def test_every_row_once_per_epoch_and_hosts_do_not_overlap():
  hosts = [PackedBatches(_rows(12), global_batch_size=4, seed=0, process_index=p, process_count=2) for p in range(2)]
  seen = []
  for _ in range(3):  # 3 steps × 4 rows = one epoch of 12 rows.
    parts = [next(h)["inputs"][:, 0] for h in hosts]
    assert not set(parts[0]) & set(parts[1])
    seen.extend(np.concatenate(parts))
  assert sorted(seen) == list(range(0, 48, 4))


def test_iterator_state_from_other_data_is_refused():
  it = PackedBatches(_rows(10), 4, 0)
  with pytest.raises(DataError, match="over 12 rows in batches of 4"):
    it.set_state({"step": 1, "seed": 0, "num_rows": 12, "global_batch_size": 4})


def test_bad_jsonl_lines_are_counted(tmp_path, caplog):
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"text": "hello", "lang": "en"}\n'
                   b'{"text": "hallo", "lang": "de"\n'
                   b'\xff\xfe\n'
                   b'{"text": "x"}\n'
                   b'{"text": "y", "lang": "xx-unknown"}\n'
                   b'{"text": "bonjour", "lang": "fra"}\n')
  records, rejected = read_jsonl([str(path)])
  assert records == [("hello", "eng"), ("bonjour", "fra")]
  assert rejected == {"malformed JSON": 1, "invalid UTF-8": 1, "missing 'text' or 'lang' field": 1,
                      "unknown language 'xx-unknown'": 1}
  assert f"{path}:2" in caplog.text


def test_unreadable_corpus_file_is_named(tmp_path):
  with pytest.raises(DataError, match=r"cannot read corpus file '.*missing.jsonl'"):
    read_jsonl([str(tmp_path / "missing.jsonl")])


def test_language_aliases():
  assert languages.resolve("zh-Hans") == languages.resolve("cmn") == languages.resolve("zh") == "zho"
  assert languages.resolve("EN") == "eng"
  with pytest.raises(languages.UnknownLanguageError, match="unknown language code 'klingon'"):
    languages.resolve("klingon")


def test_demo_corpus_is_multilingual_and_parallel(demo_data):
  train, _ = read_jsonl([demo_data["train"]])
  held_out, _ = read_jsonl([demo_data["eval"]])
  langs = {lang for _, lang in train}
  assert len(langs) >= 10
  assert len({languages.get(code).script for code in langs}) >= 5
  assert {lang for _, lang in held_out} == langs
  train_lines = {(lang, line) for text, lang in train for line in text.split("\n")}
  held_lines = [(lang, line) for text, lang in held_out for line in text.split("\n")]
  assert len(held_lines) > 300
  assert not [x for x in held_lines if x in train_lines]  # Nothing held out is trained on.
