"""Input-only code-switching (data/codeswitch.py): labels, whole words, seeds, exact resume, counts."""

import json
from collections import Counter

import numpy as np
import pytest

from conftest import batches_equal as _equal, take_batches as _take, tiny_config
from polyglot_jax import configs as config_lib
from polyglot_jax.data import backends, codeswitch, in_memory, rows
from polyglot_jax.errors import ConfigError, DataError

BOS, EOS, PAD = 1, 2, 0
LANGS = ("eng", "swa")
# English ↔ Swahili names of languages whose first pieces differ ("▁D" vs "▁K"), so that a
# switch shows in the rows as a target that is not the next input.
PAIRS = (("Danish", "Kideni"), ("Swedish", "Kiswidi"), ("Finnish", "Kifini"))


# ---- A hand-built vocabulary: ids 10, 12, 14 and 20 begin words.

def _hand_switcher(rate=1.0, seed=0):
  word_start = np.zeros(32, bool)
  word_start[[10, 12, 14, 20]] = True
  translation = np.asarray([20, 21, 22], np.int64)
  span = np.asarray([12, 13], np.int64).tobytes()
  table = codeswitch.SwitchTable({"eng": {span: [("deu", translation)]}}, {"eng": (2,)}, word_start, 1, 0)
  return codeswitch.CodeSwitcher(table, rate, seed, ("eng", "deu"))


def _pack(doc):
  return rows.pack_documents([doc], 16, BOS, EOS, PAD, mode="greedy")


def test_labels_of_a_switch_keep_the_original_text():
  # Words: [10 11] [12 13] [14 15] [12 13 16]; the dictionary word is [12 13] (eng → deu [20 21 22]).
  tokens = [10, 11, 12, 13, 14, 15, 12, 13, 16]
  switched = _hand_switcher().switch(tokens, 0, (0, 0, 0))
  # Only the whole word is switched: the second [12 13] continues into 16, a piece that starts no word.
  assert switched.switches == [codeswitch.Switch(2, "eng", "deu")]
  got = {k: v[0] for k, v in _pack(switched.as_doc(0)).items()}
  plain = {k: v[0] for k, v in _pack((tokens, 0)).items()}
  n = len(tokens) + 1
  np.testing.assert_array_equal(got["inputs"][:n + 1], [BOS, 10, 11, 20, 21, 22, 14, 15, 12, 13, 16])
  assert got["targets"][2] == 12  # The position before the switch predicts the original first token ...
  np.testing.assert_array_equal(got["loss_weights"][3:5], [0, 0])  # ... the foreign targets 21, 22 are ignored ...
  assert got["targets"][5] == 14 and got["loss_weights"][5] == 1  # ... the last switched token predicts the text.
  # Everything else is the unswitched document's: up to the switch, and after the span (shifted by one token).
  for k in ("inputs", "targets", "loss_weights", "lang_ids", "segment_ids"):
    np.testing.assert_array_equal(got[k][:3], plain[k][:3], err_msg=k)
    np.testing.assert_array_equal(got[k][6:n + 1], plain[k][5:n], err_msg=k)
  # The row's padding is untouched.
  assert not got["segment_ids"][n + 1:].any() and not got["loss_weights"][n + 1:].any()


def test_draws_are_a_pure_function_of_seed_and_document():
  tokens = [12, 13] * 40
  switcher = _hand_switcher(rate=0.5)
  first = switcher.switch(tokens, 0, (1, 0, 7))
  again = switcher.switch(tokens, 0, (1, 0, 7))
  assert [s.position for s in first.switches] == [s.position for s in again.switches]
  assert 5 < len(first.switches) < 35
  other_doc = switcher.switch(tokens, 0, (1, 0, 8))
  other_seed = _hand_switcher(rate=0.5, seed=1).switch(tokens, 0, (1, 0, 7))
  assert first.switches != other_doc.switches and first.switches != other_seed.switches
  assert _hand_switcher(rate=0.0).switch(tokens, 0, (1, 0, 7)) is None
  assert switcher.switch(tokens, 1, (1, 0, 7)) is None  # No German words in the dictionary.


# ---- The demo tokenizer and a small corpus.

def _dictionary(tmp_path):
  lines = [json.dumps({"src_text": en, "tgt_text": sw, "src_lang": "en", "tgt_lang": "sw"}) for en, sw in PAIRS[:2]]
  lines.append(json.dumps({"words": [{"text": PAIRS[2][0], "lang": "eng"}, {"text": PAIRS[2][1], "lang": "swa"}]}))
  lines += ["not json", json.dumps({"src_text": "x", "tgt_text": "y", "src_lang": "eng", "tgt_lang": "klingon"})]
  path = tmp_path / "dict.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _corpus(tmp_path, docs=40):
  records = []
  for i in range(docs):
    records.append({"text": f"Danish {i} Swedish and Danishness Finnish, Swedish", "lang": "eng"})
    records.append({"text": f"Kideni {i} na Kiswidi Kifini", "lang": "swa"})
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _config(demo_data, tmp_path, **kw):
  values = dict(data__train_files=(_corpus(tmp_path),), data__eval_files=(), data__languages=LANGS,
                data__seq_len=64, data__global_batch_size=4, data__packing="greedy",
                data__code_switch__rate=1.0, data__code_switch__dictionary=_dictionary(tmp_path))
  values.update(kw)
  return tiny_config(demo_data, **values)


def _switches_in(batches):
  """Switches visible in rows, per document language: targets that are not the next input of their segment."""
  out = Counter()
  for b in batches:
    for inputs, targets, seg, lang in zip(b["inputs"], b["targets"], b["segment_ids"], b["lang_ids"]):
      inside = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
      for j in np.flatnonzero(inside & (targets[:-1] != inputs[1:])):
        out[LANGS[lang[j]]] += 1
  return out


def _by_source(counts):
  out = Counter()
  for (src, _), n in counts.items():
    out[src] += n
  return out


def test_rate_one_switches_every_whole_word_and_no_part_of_one(demo_data, tmp_path, caplog):
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_file=demo_data["tokenizer"])
  with caplog.at_level("WARNING"):
    switcher = codeswitch.from_config(_config(demo_data, tmp_path), processor, LANGS)
  # Bad dictionary lines are counted and named by file:line, not fatal.
  assert "dict.jsonl:4" in caplog.text and "dict.jsonl:5" in caplog.text
  assert switcher.table.entries == 6  # Three pairs, both directions.
  text = "Danish Swedish and Danishness Finnish, Swedish"
  switched = switcher.switch(processor.encode(text), 0, (0, 0, 0))
  # "Danishness" holds "Danish" and "Finnish," is glued to its comma: neither is a whole word.
  assert processor.decode(switched.tokens.tolist()) == "Kideni Kiswidi and Danishness Finnish, Kiswidi"
  assert codeswitch.count(switched.switches) == Counter({("eng", "swa"): 3})
  # The weighted labels are the original text, less the tokens 2..k of each switched word.
  kept = [t for t, w in zip(switched.targets.tolist(), switched.weights.tolist()) if w]
  original = iter(processor.encode(text))
  assert switched.targets[0] == processor.encode(text)[0] and all(t in original for t in kept)


def test_packed_rate_zero_is_unchanged_and_counts_match_the_rows(demo_data, tmp_path, caplog):
  workdir = str(tmp_path)
  off = in_memory.load_text_data(_config(demo_data, tmp_path, data__code_switch__rate=0.0), workdir)
  today = in_memory.load_text_data(_config(demo_data, tmp_path, data__code_switch__rate=0.0,
                                           data__code_switch__dictionary=""), workdir)
  assert all(np.array_equal(off.train_rows[k], today.train_rows[k]) for k in today.train_rows)
  assert not off.switch_counts and not _switches_in([off.train_rows])
  with caplog.at_level("INFO"):
    on = in_memory.load_text_data(_config(demo_data, tmp_path), workdir)
  # Every English document has 3 whole dictionary words, every Swahili one 3.
  assert on.switch_counts == Counter({("eng", "swa"): 120, ("swa", "eng"): 120})
  assert _switches_in([on.train_rows]) == _by_source(on.switch_counts)
  assert "240 switches; by document language {'eng': 120, 'swa': 120}" in caplog.text
  again = in_memory.load_text_data(_config(demo_data, tmp_path), workdir)
  assert all(np.array_equal(on.train_rows[k], again.train_rows[k]) for k in on.train_rows)
  half = in_memory.load_text_data(_config(demo_data, tmp_path, data__code_switch__rate=0.5), workdir)
  reseeded = in_memory.load_text_data(_config(demo_data, tmp_path, data__code_switch__rate=0.5,
                                              data__code_switch__seed=3), workdir)
  assert 60 < sum(half.switch_counts.values()) < 180
  assert not np.array_equal(half.train_rows["inputs"], reseeded.train_rows["inputs"])


@pytest.mark.parametrize("packing", ["greedy", "best_fit"])
def test_grain_resume_switches_and_counts_like_uninterrupted(demo_data, tmp_path, packing):
  config = _config(demo_data, tmp_path, data__backend="grain", data__code_switch__rate=0.5, data__packing=packing)
  whole_it = backends.make_data(config, str(tmp_path)).train
  whole = _take(whole_it, 10)
  first = backends.make_data(config, str(tmp_path)).train
  head = _take(first, 4)
  state = json.loads(json.dumps(first.get_state()))  # As the checkpoint stores it.
  assert state["fingerprint"]["code_switch"]["rate"] == 0.5
  second = backends.make_data(config, str(tmp_path)).train
  second.set_state(state)
  assert _equal(head + _take(second, 6), whole)
  assert second.switch_counts == whole_it.switch_counts and sum(whole_it.switch_counts.values()) > 10
  if packing == "greedy":  # Counted rows are exactly the rows handed out.
    assert _switches_in(whole) == _by_source(whole_it.switch_counts)
  plain = backends.make_data(_config(demo_data, tmp_path, data__backend="grain", data__code_switch__rate=0.0,
                                     data__packing=packing), str(tmp_path)).train
  assert not _switches_in(_take(plain, 4)) and "code_switch" not in plain.get_state()["fingerprint"]
  assert "code_switches" not in plain.get_state()["hosts"][0]  # Off: the state is as before.


def test_seqio_resume_with_switching(demo_data, tmp_path):
  pytest.importorskip("seqio")
  files = []
  for lang in LANGS:
    path = tmp_path / f"{lang}.jsonl"
    path.write_text("".join(json.dumps({"text": f"Danish {i} Swedish and Kideni {i} Kiswidi"}) + "\n"
                            for i in range(20)))
    files.append((lang, str(path)))
  config = _config(demo_data, tmp_path, data__backend="seqio", data__train_files=(), data__language_files=tuple(files),
                   data__code_switch__rate=0.5)
  whole_it = backends.make_data(config, str(tmp_path)).train
  whole = _take(whole_it, 6)
  first = backends.make_data(config, str(tmp_path)).train
  head = _take(first, 2)
  second = backends.make_data(config, str(tmp_path)).train
  second.set_state(json.loads(json.dumps(first.get_state())))
  assert _equal(head + _take(second, 4), whole)
  assert _switches_in(whole) == _by_source(whole_it.switch_counts) and whole_it.switch_counts


def test_config_errors_name_the_key(demo_data, tmp_path):
  with pytest.raises(ConfigError, match="config.data.code_switch.dictionary"):
    _config(demo_data, tmp_path, data__code_switch__dictionary="")
  with pytest.raises(ConfigError, match="config.data.code_switch.rate=1.5"):
    _config(demo_data, tmp_path, data__code_switch__rate=1.5)
  config = _config(demo_data, tmp_path)
  config_lib.set_key(config, "data.code_switch.dictionary", str(tmp_path / "missing.jsonl"), from_string=False)
  with pytest.raises(ConfigError, match="config.data.code_switch.dictionary"):
    codeswitch.from_config(config, None, LANGS)
  bad = tmp_path / "bad.jsonl"
  bad.write_text("not json\n" + json.dumps({"words": [{"text": "Danish", "lang": "eng"}]}) + "\n")
  config_lib.set_key(config, "data.code_switch.dictionary", str(bad), from_string=False)
  with pytest.raises(DataError, match=r"bad.jsonl:1.*bad.jsonl:2|bad.jsonl:2.*bad.jsonl:1"):
    codeswitch.from_config(config, None, LANGS)
