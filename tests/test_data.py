"""Packing, the resumable batch iterator, JSONL reading and bad input."""

import json

import numpy as np
import pytest

from polyglot_jax.data import languages
from polyglot_jax.data.packing import pack_documents
from polyglot_jax.data.jsonl import DataError, read_jsonl
from polyglot_jax.data.mixed_batches import PackedBatches


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


def _rows(n, seq_len=4, num_langs=2):
  """n rows; row r holds the values r*seq_len..., in language r % num_langs."""
  base = np.arange(n * seq_len, dtype=np.int32).reshape(n, seq_len)
  rows = {k: base.copy() for k in ("inputs", "targets", "loss_weights", "segment_ids", "positions")}
  rows["lang_ids"] = np.repeat((np.arange(n) % num_langs)[:, None], seq_len, 1).astype(np.int32)
  return rows


def test_batches_are_deterministic_and_resume_exactly():
  make = lambda: PackedBatches(_rows(10), [0.3, 0.7], global_batch_size=4, seed=3)
  it = make()
  straight = [next(it)["inputs"] for _ in range(7)]
  resumed = make()
  for _ in range(3):
    next(resumed)
  state = json.loads(json.dumps(resumed.get_state()))
  again = make()
  again.set_state(state)
  for i in range(3, 7):
    np.testing.assert_array_equal(next(again)["inputs"], straight[i])


def test_languages_follow_the_rates_and_each_walks_all_its_rows():
  it = PackedBatches(_rows(40, num_langs=2), [0.25, 0.75], global_batch_size=8, seed=0)
  langs, firsts = [], []
  for _ in range(50):
    batch = next(it)
    langs.extend(batch["lang_ids"][:, 0])
    firsts.extend(batch["inputs"][:, 0] // 4)
  share = np.mean(np.asarray(langs) == 1)
  assert abs(share - 0.75) < 0.05
  # Language 0's first 20 draws are a permutation of its 20 rows (one epoch).
  lang0_rows = [r for r, lang in zip(firsts, langs) if lang == 0][:20]
  assert sorted(lang0_rows) == list(range(0, 40, 2))


def test_hosts_take_disjoint_slices_of_one_global_batch():
  whole = PackedBatches(_rows(64), [0.5, 0.5], global_batch_size=8, seed=1)
  hosts = [PackedBatches(_rows(64), [0.5, 0.5], 8, seed=1, process_index=p, process_count=2) for p in range(2)]
  for _ in range(3):
    expected = next(whole)["inputs"]
    parts = [next(h)["inputs"] for h in hosts]
    np.testing.assert_array_equal(np.concatenate(parts), expected)


def test_iterator_state_from_other_data_is_refused():
  it = PackedBatches(_rows(10), [0.5, 0.5], 4, 0)
  with pytest.raises(DataError, match="over 12 rows in batches of 4"):
    it.set_state({"step": 1, "seed": 0, "num_rows": 12, "global_batch_size": 4, "draws": 4, "consumed": [2, 2]})


def test_a_language_with_a_rate_but_no_rows_is_named():
  with pytest.raises(DataError, match="language id 2 has mixture rate 0.2 but no training rows"):
    PackedBatches(_rows(10), [0.4, 0.4, 0.2], 4, 0)


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
