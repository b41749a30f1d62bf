"""grain backend: sharding, mixture by tokens, packing, ArrayRecord = JSONL, exact resume."""

import json

import numpy as np
import pytest

from conftest import batches_equal as _equal, take_batches as _take, tiny_config
from polyglot_jax.data import backends, doc_index, stream
from polyglot_jax.data.packing import FIELDS, pack_documents
from polyglot_jax.errors import DataError

LANGS = ("deu", "eng", "swa")


def _corpus(tmp_path, docs_per_lang=60, arrayrecord=False):
  """Unique documents per language; Swahili ones are three times longer than the rest."""
  records = []
  for lang in LANGS:
    for i in range(docs_per_lang):
      words = [f"{lang} doc {i} word {j}" for j in range(9 if lang == "swa" else 3)]
      records.append({"text": " ".join(words), "lang": lang})
  path = tmp_path / ("train.arrayrecord" if arrayrecord else "train.jsonl")
  if arrayrecord:
    doc_index.write_array_record(str(path), records)
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path), records


def _config(demo_data, train, **kw):
  values = dict(data__backend="grain", data__train_files=(train,), data__eval_files=(), data__languages=LANGS,
                data__seq_len=32, data__global_batch_size=4, data__mixture__method="proportional")
  values.update(kw)
  return tiny_config(demo_data, **values)


def test_resume_equals_uninterrupted(demo_data, tmp_path):
  train, _ = _corpus(tmp_path)
  config = _config(demo_data, train)
  whole = _take(backends.make_data(config, str(tmp_path)).train, 12)
  first = backends.make_data(config, str(tmp_path)).train
  head = _take(first, 5)
  state = json.loads(json.dumps(first.get_state()))  # As the checkpoint stores it.
  second = backends.make_data(config, str(tmp_path)).train
  second.set_state(state)
  assert _equal(head + _take(second, 7), whole)


def test_arrayrecord_reads_like_jsonl(demo_data, tmp_path):
  jsonl, _ = _corpus(tmp_path)
  array, _ = _corpus(tmp_path, arrayrecord=True)
  a = _take(backends.make_data(_config(demo_data, jsonl), str(tmp_path)).train, 4)
  b = _take(backends.make_data(_config(demo_data, array), str(tmp_path)).train, 4)
  assert _equal(a, b)


def test_tokens_follow_the_rates(demo_data, tmp_path):
  train, _ = _corpus(tmp_path, docs_per_lang=40)
  config = _config(demo_data, train, data__mixture__method="weights",
                   data__mixture__weights=(("deu", 1.0), ("eng", 1.0), ("swa", 2.0)))
  data = backends.make_data(config, str(tmp_path))
  assert data.rates == pytest.approx({"deu": 0.25, "eng": 0.25, "swa": 0.5})
  counts = np.zeros(3)
  for batch in _take(data.train, 150):
    counts += np.bincount(batch["lang_ids"][batch["loss_weights"] > 0], minlength=3)
  # Swahili documents are 3x longer, so documents alone would give it ~3/5 of the tokens.
  np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.25, 0.5], atol=0.03)


def test_hosts_read_disjoint_documents(demo_data, tmp_path):
  from polyglot_jax.data import grain_pipeline
  train, _ = _corpus(tmp_path)
  index, _ = doc_index.index_documents([train], [], "train_files")
  readers = {i: doc_index.DocReader(index[code], code) for i, code in enumerate(LANGS)}
  weights = {0: 1.0, 1: 1.0, 2: 1.0}
  whole = grain_pipeline.host_documents(readers, weights, seed=3, process_index=0, process_count=1)
  hosts = [grain_pipeline.host_documents(readers, weights, 3, p, 2) for p in range(2)]
  n = 60  # Within one epoch of every language, documents are unique.
  mine = [[hosts[p][i] for i in range(n)] for p in range(2)]
  assert not set(mine[0]) & set(mine[1])
  assert set(mine[0]) | set(mine[1]) == {whole[i] for i in range(2 * n)}


def test_stream_packing_matches_pack_documents():
  rng = np.random.default_rng(0)
  docs = [(rng.integers(5, 50, size=rng.integers(1, 40)), int(rng.integers(0, 3))) for _ in range(50)]
  batches = stream.StreamBatches(lambda pos: iter(docs[pos:]), seq_len=16, local_batch_size=1, bos_id=2, eos_id=3,
                                 pad_id=0, fingerprint={}, process_index=0, process_count=1)
  expected = pack_documents(docs, 16, bos_id=2, eos_id=3)
  got = [next(batches) for _ in range(len(expected["inputs"]))]
  for k in FIELDS:
    np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), expected[k], err_msg=k)
  # Attention never crosses documents: every segment holds one document's piece,
  # and its language id is constant.
  for g in got:
    for seg in np.unique(g["segment_ids"][g["segment_ids"] > 0]):
      where = g["segment_ids"][0] == seg
      assert len(set(g["lang_ids"][0][where])) == 1
      np.testing.assert_array_equal(g["positions"][0][where], np.arange(where.sum()))


def test_host_count_change(demo_data, tmp_path):
  train, _ = _corpus(tmp_path)
  config = _config(demo_data, train)
  it = backends.make_data(config, str(tmp_path)).train
  _take(it, 3)
  state = it.get_state()
  state["process_count"], state["hosts"] = 2, state["hosts"] * 2
  with pytest.raises(DataError, match="saved by 2 hosts and this run has 1"):
    backends.make_data(config, str(tmp_path)).train.set_state(state)
  restart = backends.make_data(_config(demo_data, train, data__on_host_change="restart"), str(tmp_path)).train
  restart.set_state(state)
  assert _equal(_take(restart, 2), _take(backends.make_data(config, str(tmp_path)).train, 2))


def test_changed_data_settings_refuse_the_state(demo_data, tmp_path):
  train, _ = _corpus(tmp_path)
  it = backends.make_data(_config(demo_data, train), str(tmp_path)).train
  state = it.get_state()
  other = backends.make_data(_config(demo_data, train, data__shuffle_seed=9), str(tmp_path)).train
  with pytest.raises(DataError, match="data.shuffle_seed=0"):
    other.set_state(state)


def test_bad_records_are_counted_with_their_line(demo_data, tmp_path, caplog):
  train, _ = _corpus(tmp_path, docs_per_lang=10)
  with open(train, "ab") as f:
    f.write(b'{"text": "broken\n')
    f.write(b'{"text": "\xff\xfe", "lang": "eng"}\n')
    f.write(b'{"text": "x", "lang": "xx-unknown"}\n')
  data = backends.make_data(_config(demo_data, train), str(tmp_path))
  assert data.rejected == {"malformed JSON": 1, "invalid UTF-8": 1, "unknown language 'xx-unknown'": 1}
  assert f"{train}:31" in caplog.text


def test_language_files_and_missing_language(demo_data, tmp_path):
  for lang in LANGS:
    (tmp_path / f"{lang}.jsonl").write_text("".join(json.dumps({"text": f"{lang} text {i}"}) + "\n"
                                                    for i in range(20)))
  pairs = tuple((lang, str(tmp_path / f"{lang}.jsonl")) for lang in LANGS)
  config = _config(demo_data, "", data__train_files=(), data__language_files=pairs)
  data = backends.make_data(config, str(tmp_path))
  assert data.languages == LANGS and set(data.sizes) == set(LANGS)
  with pytest.raises(DataError, match=r"names \['fra'\]"):
    backends.make_data(_config(demo_data, "", data__train_files=(), data__language_files=pairs,
                               data__languages=LANGS + ("fra",)), str(tmp_path))


@pytest.mark.slow
def test_trainer_runs_on_grain_and_resumes(demo_data, tmp_path):
  from polyglot_jax.train.trainer import train_and_evaluate
  overrides = dict(data__backend="grain", train__num_steps=6, checkpoint__every_steps=3)
  whole = train_and_evaluate(tiny_config(demo_data, **overrides), str(tmp_path / "whole"))
  part = tiny_config(demo_data, train__stop_after_steps=3, **overrides)
  train_and_evaluate(part, str(tmp_path / "split"))
  resumed = train_and_evaluate(tiny_config(demo_data, **overrides), str(tmp_path / "split"))
  assert resumed["step"] == whole["step"] == 6
  a = np.concatenate([np.ravel(x) for x in _leaves(whole["state"].params)])
  b = np.concatenate([np.ravel(x) for x in _leaves(resumed["state"].params)])
  np.testing.assert_array_equal(a, b)
  assert resumed["eval_after"] == whole["eval_after"]


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
