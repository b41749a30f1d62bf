"""Record kinds (validators, rows, masks) and the shared row writer (greedy, best-fit, streaming best-fit)."""

import json

import numpy as np
import pytest
import sentencepiece as spm

from polyglot_jax.data import records, rows, stream
from polyglot_jax.errors import ConfigError

BOS, EOS, PAD = 1, 2, 0


def random_docs(n, seed=0, max_len=40):
  rng = np.random.default_rng(seed)
  return [(rng.integers(5, 100, rng.integers(1, max_len)), int(rng.integers(0, 3))) for _ in range(n)]


def documents_in(rows_dict):
  """Every (segment) piece of packed rows as (lang, inputs tuple), sorted: what the rows hold."""
  out = []
  for r in range(len(rows_dict["inputs"])):
    seg = rows_dict["segment_ids"][r]
    for s in np.unique(seg[seg > 0]):
      sel = seg == s
      assert np.array_equal(rows_dict["positions"][r][sel], np.arange(sel.sum())), "positions restart per piece"
      assert len(np.unique(rows_dict["lang_ids"][r][sel])) == 1
      out.append((int(rows_dict["lang_ids"][r][sel][0]), tuple(rows_dict["inputs"][r][sel])))
  return sorted(out)


def expected_pieces(docs, seq_len):
  out = []
  for tokens, lang in docs:
    for _, inputs, _, _ in rows.document_pieces(tokens, BOS, EOS, seq_len):
      out.append((lang, tuple(inputs)))
  return sorted(out)


def test_best_fit_holds_every_piece_once_with_less_padding():
  docs = random_docs(300)
  greedy = rows.pack_documents(docs, 32, BOS, EOS, PAD, mode="greedy")
  best = rows.pack_documents(docs, 32, BOS, EOS, PAD, mode="best_fit")
  assert documents_in(best) == expected_pieces(docs, 32) == documents_in(greedy)
  assert rows.padding_fraction(best) < rows.padding_fraction(greedy)
  assert len(best["inputs"]) < len(greedy["inputs"])
  # Targets are the inputs shifted within each document: check one row against its document.
  np.testing.assert_array_equal(best["loss_weights"] > 0, best["segment_ids"] > 0)


def stream_over(docs, packing, seq_len=16, batch=2, open_rows=4):
  return stream.StreamBatches(lambda pos: iter(docs[pos:]), seq_len=seq_len, local_batch_size=batch, bos_id=BOS,
                              eos_id=EOS, pad_id=PAD, fingerprint={"t": 1}, process_index=0, process_count=1,
                              packing=packing, open_rows=open_rows)


def test_streaming_best_fit_resumes_exactly_and_pads_less():
  docs = random_docs(400, seed=1, max_len=12)
  full = stream_over(docs, "best_fit")
  batches = [next(full) for _ in range(12)]
  first = stream_over(docs, "best_fit")
  for _ in range(5):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # Through JSON, as the checkpoint stores it.
  assert state["hosts"][0]["packer"]["open"], "open rows travel in the state"
  resumed = stream_over(docs, "best_fit")
  resumed.set_state(state)
  for expected in batches[5:]:
    got = next(resumed)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])
  greedy = stream_over(docs, "greedy")
  g = [next(greedy) for _ in range(12)]
  pad = lambda bs: np.mean([(b["segment_ids"] == 0).mean() for b in bs])
  assert pad(batches) < pad(g)


def test_streaming_state_refuses_another_packing():
  docs = random_docs(50)
  a = stream_over(docs, "best_fit")
  next(a)
  with pytest.raises(ValueError, match="packing"):
    stream_over(docs, "greedy").set_state(a.get_state())


@pytest.fixture(scope="module")
def processor(demo_data):
  return spm.SentencePieceProcessor(model_file=demo_data["tokenizer"])


def options(ids=None, packing="greedy", template="alpaca"):
  return records.RowOptions(packing, template, ids or {"eng": 0, "deu": 1})


def test_instruction_rows_mask_the_prompt(processor):
  kind = records.get_kind("instruction")
  content = kind.parse({"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen"})
  out = kind.rows([content], processor, 0, 512, options())
  assert len(out["inputs"]) == 1
  prompt, response = kind.render(content, "alpaca")
  n_prompt, n_response = len(processor.encode(prompt)), len(processor.encode(response))
  w = out["loss_weights"][0]
  # Targets: prompt tokens (masked), response tokens and eos (learned), then padding.
  assert w[:n_prompt].sum() == 0 and w[n_prompt:n_prompt + n_response + 1].all() and w[n_prompt + n_response + 1:].sum() == 0
  np.testing.assert_array_equal(out["targets"][0][n_prompt:n_prompt + n_response], processor.encode(response))


def test_chat_rows_learn_only_assistant_turns(processor):
  kind = records.get_kind("chat")
  content = kind.parse({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
  out = kind.rows([content], processor, 0, 64, options())
  learned = out["targets"][0][out["loss_weights"][0] > 0]
  expected = processor.encode("Hello\n") + [processor.eos_id()]
  np.testing.assert_array_equal(learned, expected)
  assert isinstance(kind.parse({"messages": [{"role": "user", "content": "x"}]}), records.Rejected)


def test_preference_rows_keep_the_pair_and_reference_logps(processor):
  kind = records.get_kind("preference")
  a = kind.parse({"prompt": "2+2=", "chosen": "4", "rejected": "5", "ref_logp_chosen": -1.5, "ref_logp_rejected": -3.0})
  b = kind.parse({"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"})
  out = kind.rows([a, b], processor, 1, 32, options())
  assert out["chosen_inputs"].shape == (2, 32) and out["ref_logp_chosen"].dtype == np.float32
  np.testing.assert_array_equal(out["ref_logp_chosen"], [-1.5, 0.0])
  np.testing.assert_array_equal(out["has_ref_logp"], [1, 0])
  for side, text in (("chosen", "Paris"), ("rejected", "Rome")):
    learned = out[f"{side}_targets"][1][out[f"{side}_loss_weights"][1] > 0]
    np.testing.assert_array_equal(learned, processor.encode(text) + [processor.eos_id()])
    assert set(out[f"{side}_lang_ids"][1][out[f"{side}_segment_ids"][1] > 0]) == {1}
  assert isinstance(kind.parse({"prompt": "p", "chosen": "a", "rejected": "b", "ref_logp_chosen": 1.0}),
                    records.Rejected)
  same = kind.parse({"prompt": "p", "chosen": "Paris ", "rejected": "Paris"})
  assert isinstance(same, records.Rejected) and str(same) == "chosen == rejected (nothing to prefer)"


def test_word_groups_rows_mark_words_and_groups(processor):
  kind = records.get_kind("word_groups")
  groups = [kind.parse({"words": [{"text": "water", "lang": "eng"}, {"text": "Wasser", "lang": "deu"}]}),
            kind.parse({"words": [{"text": "house", "lang": "en"}, {"text": "Haus", "lang": "de"}]})]
  out = kind.rows(groups, processor, 0, 32, options())
  assert out["word_groups"].shape == (1, 16)
  # A group's id is a hash of its words: one id per group, the same for any backend or run.
  ids = [records.group_hash(g) for g in groups]
  assert ids[0] != ids[1] and ids == [records.group_hash([tuple(w) for w in g]) for g in groups]
  np.testing.assert_array_equal(out["word_groups"][0][:5], [ids[0], ids[0], ids[1], ids[1], -1])
  word_ids = out["word_ids"][0]
  for word, (text, lang) in enumerate([("water", 0), ("Wasser", 1), ("house", 0), ("Haus", 1)], 1):
    sel = word_ids == word
    np.testing.assert_array_equal(out["inputs"][0][sel], [processor.bos_id()] + processor.encode(text))
    assert set(out["lang_ids"][0][sel]) == {lang}
  assert records.get_kind("word_pairs").parse({"src_text": "a", "tgt_text": "b", "src_lang": "eng",
                                               "tgt_lang": "xx-nonsense"}) == "unknown language 'xx-nonsense'"


def test_read_records_counts_rejects_with_reasons(tmp_path):
  path = tmp_path / "inst.jsonl"
  path.write_text('{"instruction": "a", "output": "b", "lang": "eng"}\n{"instruction": "", "output": "b", "lang": "eng"}\n'
                  'not json\n{"instruction": "a", "output": "b", "lang": "klingon"}\n')
  got, rejected = records.read_records([str(path)], "instruction")
  assert [lang for _, lang in got] == ["eng"]
  assert rejected == {"missing, empty or non-string 'instruction' / 'output' (or a non-string 'input')": 1,
                      "malformed JSON": 1, "unknown language 'klingon'": 1}


def test_unknown_kind_is_named():
  with pytest.raises(ConfigError, match=r"config.data.kind='prefs' is unknown; record kinds: \["):
    records.get_kind("prefs")


def assert_resumes(config, workdir, batches, k):
  """A data iterator stopped after k batches and restored (through JSON) gives batches[k:]."""
  from polyglot_jax.data.backends import make_data
  first = make_data(config, workdir)
  for _ in range(k):
    next(first.train)
  again = make_data(config, workdir)
  again.train.set_state(json.loads(json.dumps(first.train.get_state())))
  for expected in batches[k:]:
    got = next(again.train)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


def test_grain_streams_instruction_records_with_masks_and_resumes(make_config, tmp_path):
  from polyglot_jax.data.backends import make_data
  path = tmp_path / "inst.jsonl"
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for i in range(60):
      lang = ["eng", "deu"][i % 2]
      f.write(json.dumps({"instruction": f"Say {i}", "output": " ".join(["word"] * int(rng.integers(1, 9))),
                          "lang": lang}) + "\n")
  config = make_config(data__backend="grain", data__kind="instruction", data__template="plain",
                       data__train_files=(str(path),), data__eval_files=(), data__seq_len=32)
  full = make_data(config, str(tmp_path / "w"))
  batches = [next(full.train) for _ in range(6)]
  for b in batches:
    real = b["segment_ids"] > 0
    assert (b["loss_weights"][real] == 0).any() and (b["loss_weights"][real] == 1).any()
    assert not b["loss_weights"][~real].any()
  # Every learned target is "word" pieces or eos: the prompts ("Say i") are never learned.
  learned = np.concatenate([b["targets"][b["loss_weights"] > 0] for b in batches])
  processor = spm.SentencePieceProcessor(model_file=config.data.tokenizer)
  allowed = set(processor.encode("word word")) | {processor.eos_id()}
  assert set(learned.tolist()) <= allowed
  assert_resumes(config, str(tmp_path / "w"), batches, 3)


def test_grain_serves_preference_pairs_row_by_row_and_resumes(make_config, tmp_path):
  from polyglot_jax.data.backends import make_data
  path = tmp_path / "prefs.jsonl"
  with open(path, "w") as f:
    for i in range(40):
      f.write(json.dumps({"prompt": f"Question {i}?", "chosen": "yes " * (1 + i % 4), "rejected": "no",
                          "lang": ["eng", "fra"][i % 2], "ref_logp_chosen": -float(i), "ref_logp_rejected": -1.0})
              + "\n")
  config = make_config(data__backend="grain", data__kind="preference", data__train_files=(str(path),),
                       data__eval_files=(str(path),), data__seq_len=32)
  full = make_data(config, str(tmp_path / "w"))
  batches = [next(full.train) for _ in range(5)]
  b = batches[0]
  assert b["chosen_inputs"].shape == (8, 32) and b["ref_logp_chosen"].shape == (8,)
  assert (b["has_ref_logp"] == 1).all()
  # Each row holds one pair: its reference log-prob names the record, whose chosen text we know.
  processor = spm.SentencePieceProcessor(model_file=config.data.tokenizer)
  for r in range(8):
    i = int(-b["ref_logp_chosen"][r])
    learned = b["chosen_targets"][r][b["chosen_loss_weights"][r] > 0]
    np.testing.assert_array_equal(learned, processor.encode("yes " * (1 + i % 4)) + [processor.eos_id()])
  assert full.held_out and full.held_out[0]["rejected_inputs"].shape[1] == 32
  assert_resumes(config, str(tmp_path / "w"), batches, 2)
