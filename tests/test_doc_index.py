"""The document index cache: a start on unchanged files reads no record and returns the same index."""

import json
import logging
import os
import time

import numpy as np
import pytest

from polyglot_jax.data import doc_index

LANGS = ("deu", "eng", "swa")
BAD = (b'{"text": "broken\n', b'{"text": "\xff\xfe", "lang": "eng"}\n', b'{"text": "x", "lang": "xx-unknown"}\n')


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  """A private user cache dir, and the log-once messages logged again in every test."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
  monkeypatch.delenv(doc_index.WORKERS_ENV, raising=False)
  monkeypatch.setattr(doc_index, "_logged", set())


def _age(*paths, seconds=3600):
  """Sets mtimes well in the past: a file written just now is not cached (doc_index.RACY_NS)."""
  past = time.time() - seconds
  for path in paths:
    os.utime(path, (past, past))


def _mixed(path, n, bad=True, offset=0):
  """n records cycling through LANGS, with the three kinds of BAD record spread among them."""
  with open(path, "wb") as f:
    for i in range(n):
      f.write((json.dumps({"text": f"doc {offset + i} é", "lang": LANGS[i % 3]}) + "\n").encode())
      if bad and i % 7 == 3:
        f.write(BAD[(i // 7) % 3])
  return str(path)


def _corpus(root):
  """Two mixed files and one Swahili file (records without "lang", one in German); all aged."""
  root.mkdir(exist_ok=True)
  a = _mixed(root / "a.jsonl", 40)
  b = _mixed(root / "b.jsonl", 30, offset=100)
  swa = root / "swa.jsonl"
  swa.write_text("".join(json.dumps({"text": f"swa {i}"}) + "\n" for i in range(12))
                 + json.dumps({"text": "de", "lang": "deu"}) + "\n")
  _age(a, b, swa)
  return [str(root / "[ab].jsonl")], (("swa", str(swa)),)


class _Spy:
  """Counts the files read and the records parsed by doc_index."""

  def __init__(self, monkeypatch):
    self.files, self.records = [], 0
    read, parse = doc_index.iter_file_records, doc_index.parse_any

    def iter_file_records(path):
      self.files.append(os.path.basename(path))
      return read(path)

    def parse_any(raw, default_lang, kind, path, number):
      self.records += 1
      return parse(raw, default_lang, kind, path, number)

    monkeypatch.setattr(doc_index, "iter_file_records", iter_file_records)
    monkeypatch.setattr(doc_index, "parse_any", parse_any)

  def reset(self):
    self.files, self.records = [], 0


def _assert_same(a, b):
  """Two (index, rejected) results are equal: languages in order, arrays, dtypes, counts."""
  (ia, ra), (ib, rb) = a, b
  assert list(ia) == list(ib)
  for lang in ia:
    assert ia[lang].files == ib[lang].files and ia[lang].text_bytes == ib[lang].text_bytes
    for field in ("file_ids", "keys"):
      x, y = getattr(ia[lang], field), getattr(ib[lang], field)
      assert x.dtype == y.dtype and np.array_equal(x, y), (lang, field)
  assert list(ra.items()) == list(rb.items())


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_second_start_reads_no_record(tmp_path, monkeypatch, caplog):
  train, per_lang = _corpus(tmp_path / "data")
  spy = _Spy(monkeypatch)
  with caplog.at_level(logging.INFO):
    first = doc_index.index_documents(train, per_lang, "train_files")
  assert sorted(spy.files) == ["a.jsonl", "b.jsonl", "swa.jsonl"]
  assert spy.records == 40 + 6 + 30 + 4 + 13  # Records and BAD lines.
  caches = sorted(os.listdir(tmp_path / "data" / doc_index.INDEX_DIR))
  assert caches == ["a.jsonl.npz", "b.jsonl.npz", "swa.jsonl.swa.npz"]
  index, rejected = first
  assert {lang: len(index[lang]) for lang in index} == {"deu": 24, "eng": 23, "swa": 35}
  assert rejected == {"malformed JSON": 4, "invalid UTF-8": 3, "unknown language 'xx-unknown'": 3,
                      "lang 'deu' in a file of language 'swa'": 1}
  logged = _warnings(caplog)
  caplog.clear()
  spy.reset()
  with caplog.at_level(logging.INFO):
    second = doc_index.index_documents(train, per_lang, "train_files")
  assert spy.files == [] and spy.records == 0
  _assert_same(first, second)
  assert _warnings(caplog) == logged  # Same warnings, same first file:line, same order.
  assert f"{tmp_path / 'data' / 'a.jsonl'}:5" in logged[0]
  assert "3 files, 3 from the cache, 0 indexed;" in caplog.text


def test_a_changed_file_is_the_only_one_read_again(tmp_path, monkeypatch):
  train, per_lang = _corpus(tmp_path / "data")
  before, _ = doc_index.index_documents(train, per_lang, "train_files")
  spy = _Spy(monkeypatch)
  a = tmp_path / "data" / "a.jsonl"
  with open(a, "ab") as f:
    f.write(b'{"text": "the new one", "lang": "eng"}\n')
  index, rejected = doc_index.index_documents(train, per_lang, "train_files")
  assert spy.files == ["a.jsonl"] and spy.records == 47
  assert len(index["eng"]) == len(before["eng"]) + 1
  new_key = os.path.getsize(a) - len(b'{"text": "the new one", "lang": "eng"}\n')
  assert int(index["eng"].keys[len(index["eng"]) - 1 - 10]) == new_key  # Before b.jsonl's 10 English ones.
  assert index["eng"].text_bytes == before["eng"].text_bytes + len("the new one")
  assert rejected["malformed JSON"] == 4
  # Modified just now: not cached (its mtime could not tell a same-size rewrite), so read again.
  spy.reset()
  doc_index.index_documents(train, per_lang, "train_files")
  assert spy.files == ["a.jsonl"]
  # A touch (new mtime, same bytes) also invalidates, and the aged file is cached again.
  _age(a)
  spy.reset()
  again, rejected_again = doc_index.index_documents(train, per_lang, "train_files")
  assert spy.files == ["a.jsonl"]
  spy.reset()
  _assert_same(doc_index.index_documents(train, per_lang, "train_files"), (again, rejected_again))
  assert spy.files == []
  _age(a, seconds=7200)  # Same size, other mtime.
  doc_index.index_documents(train, per_lang, "train_files")
  assert spy.files == ["a.jsonl"]


def test_language_filter_on_a_cached_index_equals_an_uncached_one(tmp_path, monkeypatch, caplog):
  train, per_lang = _corpus(tmp_path / "data")
  wanted = ("eng", "swa")
  with monkeypatch.context() as m, caplog.at_level(logging.WARNING):  # Uncached: no cache read or written.
    m.setattr(doc_index, "_load_cache", lambda *args: None)
    m.setattr(doc_index, "_save_cache", lambda *args: "racy")
    uncached = doc_index.index_documents(train, per_lang, "train_files", wanted)
  uncached_logged = _warnings(caplog)
  assert not os.path.exists(tmp_path / "data" / doc_index.INDEX_DIR)
  doc_index.index_documents(train, per_lang, "train_files")  # Builds the cache, unfiltered.
  spy = _Spy(monkeypatch)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    cached = doc_index.index_documents(train, per_lang, "train_files", wanted)
  assert spy.records == 0
  _assert_same(uncached, cached)
  assert _warnings(caplog) == uncached_logged
  index, rejected = cached
  assert list(index) == ["eng", "swa"] and len(index["eng"]) == 23 and len(index["swa"]) == 35
  # In the order a record-by-record pass meets them: a.jsonl's first record is German.
  assert list(rejected) == ["language 'deu' not in config.data.languages", "malformed JSON", "invalid UTF-8",
                            "unknown language 'xx-unknown'", "lang 'deu' in a file of language 'swa'"]
  assert rejected["language 'deu' not in config.data.languages"] == 24
  assert f"language 'deu' not in config.data.languages); first at {tmp_path / 'data' / 'a.jsonl'}:1" in caplog.text


def test_parallel_indexing_equals_serial(tmp_path, monkeypatch):
  train, per_lang = _corpus(tmp_path / "serial")
  index, rejected = doc_index.index_documents(train, per_lang, "train_files")
  train, per_lang = _corpus(tmp_path / "parallel")
  monkeypatch.setenv(doc_index.WORKERS_ENV, "2")
  index_p, rejected_p = doc_index.index_documents(train, per_lang, "train_files")
  assert len(os.listdir(tmp_path / "parallel" / doc_index.INDEX_DIR)) == 3  # The workers wrote the caches.
  assert list(index_p) == list(index) and list(rejected_p.items()) == list(rejected.items())
  for lang, where in index.items():
    assert [f.replace("serial", "parallel") for f in where.files] == index_p[lang].files
    assert np.array_equal(where.keys, index_p[lang].keys) and np.array_equal(where.file_ids, index_p[lang].file_ids)
    assert where.text_bytes == index_p[lang].text_bytes
  monkeypatch.setenv(doc_index.WORKERS_ENV, "two")
  (tmp_path / "parallel" / "b.jsonl").write_text("")
  with pytest.raises(doc_index.DataError, match="POLYGLOT_JAX_INDEX_WORKERS='two'.*whole number"):
    doc_index.index_documents(train, per_lang, "train_files")


def test_unwritable_data_dir_caches_under_the_user_dir_or_not_at_all(tmp_path, monkeypatch, caplog):
  train, per_lang = _corpus(tmp_path / "data")
  # A file where the cache folder would go: unwritable even for root (chmod is not, for root).
  (tmp_path / "data" / doc_index.INDEX_DIR).write_text("")
  os.chmod(tmp_path / "data", 0o555)
  try:
    with caplog.at_level(logging.INFO):
      first = doc_index.index_documents(train, per_lang, "train_files")
    assert "caching indexes under" in caplog.text
    assert len(os.listdir(tmp_path / "user_cache" / "polyglot_jax" / "doc_index")) == 3
    spy = _Spy(monkeypatch)
    _assert_same(first, doc_index.index_documents(train, per_lang, "train_files"))
    assert spy.records == 0
    # No writable place at all: indexed every time, a warning logged once.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "data" / doc_index.INDEX_DIR))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      _assert_same(first, doc_index.index_documents(train, per_lang, "train_files"))
      _assert_same(first, doc_index.index_documents(train, per_lang, "train_files"))
    assert spy.files.count("a.jsonl") == 2
    assert caplog.text.count("every start re-reads every record") == 1
  finally:
    os.chmod(tmp_path / "data", 0o755)


def test_damaged_cache_or_other_language_is_rebuilt(tmp_path, monkeypatch):
  train, per_lang = _corpus(tmp_path / "data")
  first = doc_index.index_documents(train, per_lang, "train_files")
  cache = tmp_path / "data" / doc_index.INDEX_DIR
  (cache / "a.jsonl.npz").write_bytes(b"not a zip")
  spy = _Spy(monkeypatch)
  _assert_same(first, doc_index.index_documents(train, per_lang, "train_files"))
  assert spy.files == ["a.jsonl"]
  # swa.jsonl read as a German file (its cache is Swahili's): its records without "lang" are German.
  spy.reset()
  index, rejected = doc_index.index_documents([], (("deu", str(tmp_path / "data" / "swa.jsonl")),), "train_files")
  assert spy.files == ["swa.jsonl"]
  assert list(index) == ["deu"] and len(index["deu"]) == 13 and not rejected
  # A cache of another language under this one's name (copied by hand) is not trusted either.
  os.replace(cache / "swa.jsonl.swa.npz", cache / "swa.jsonl.deu.npz")
  spy.reset()
  index, rejected = doc_index.index_documents([], (("deu", str(tmp_path / "data" / "swa.jsonl")),), "train_files")
  assert spy.files == ["swa.jsonl"] and len(index["deu"]) == 13
