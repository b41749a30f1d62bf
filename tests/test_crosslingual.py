"""Cross-lingual probes (eval/crosslingual.py): items, scoring against NumPy, an end-to-end CLKA run, bad input."""

import json
import os

import jax
import numpy as np
import pytest
import sentencepiece as spm

from polyglot_jax import configs as config_lib
from polyglot_jax.data import clone
from polyglot_jax.errors import ConfigError, DataError, UnknownLanguageError
from polyglot_jax.eval import crosslingual as xl


@pytest.fixture(scope="module")
def clone_dir(demo_data, tmp_path_factory):
  """An English-Clone testbed of the demo tokenizer (`polyglot-jax data clone` output)."""
  out = str(tmp_path_factory.mktemp("xl_clone"))
  english = [json.loads(line) for line in open(demo_data["train"]) if json.loads(line)["lang"] == "eng"]
  clone.write_clone(demo_data["tokenizer"], english[:200], out)
  return out


def _converted_workdir(path, tokenizer, seed=0):
  """A workdir as `polyglot-jax convert` writes it (config.json + params/): a tiny model, weights large enough
  that choices differ clearly in log-probability."""
  from flax import nnx

  from polyglot_jax import mesh as mesh_lib
  from polyglot_jax.interop import workdir as workdir_lib
  from polyglot_jax.models.config import ModelConfig
  from polyglot_jax.models.decoder import Decoder
  config = config_lib.default_config()
  config.lock()
  values = {"model.vocab_size": spm.SentencePieceProcessor(model_file=tokenizer).vocab_size(),
            "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
            "model.mlp_dim": 64, "model.attention_block": 32, "data.seq_len": 64, "data.tokenizer": tokenizer,
            "metrics.peak_flops_per_device": 1e9}
  for key, value in values.items():
    config_lib.set_key(config, key, value, from_string=False)
  mesh = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
  with mesh_lib.activate(mesh, mesh_lib.rules_tuple(config.logical_axis_rules)):
    abstract = nnx.eval_shape(lambda: Decoder(ModelConfig.from_config(config.model), nnx.Rngs(params=0)))
  rng = np.random.default_rng(seed)
  # Norm scales 1; matrices N(0, 0.3²).
  params = jax.tree.map(lambda x: np.ones(x.shape, np.float32) if len(x.shape) < 2 else
                        0.3 * rng.standard_normal(x.shape, np.float32),
                        nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  workdir_lib.write_params(path, params)
  return path


@pytest.fixture(scope="module")
def base(clone_dir, tmp_path_factory):
  """A tiny checkpoint whose tokenizer is the clone tokenizer (it encodes English and English-Clone)."""
  return _converted_workdir(str(tmp_path_factory.mktemp("xl_base") / "base"), os.path.join(clone_dir, "clone.model"))


def test_clka_items_are_seeded_translated_and_cloned(clone_dir):
  from babel import Locale
  cmap = clone.load_clone_map(clone_dir)
  train, queries = xl.clka_items("en", ["fr", "qen"], n_facts=20, n_choices=4, clone_map=cmap, seed=3)
  again, queries_again = xl.clka_items("eng", ["fra", "qen"], n_facts=20, n_choices=4, clone_map=cmap, seed=3)
  assert train == again and queries == queries_again
  assert list(queries) == ["eng", "fra", "qen"] and all(len(q) == 20 for q in queries.values())
  other, _ = xl.clka_items("en", ["fr"], n_facts=20, seed=4)
  assert other[:20] != train[:20]
  # Training: each fact's English sentence FACT_REPEATS times, and it is the query's prompt + the right choice.
  assert len(train) == 20 * xl.FACT_REPEATS and train[:20] == train[20:40]
  for fact, query in zip(train, queries["eng"]):
    assert fact == {"text": query.prompt + query.sep + query.choices[query.answer], "lang": "eng"}
    assert fact["text"].startswith(query.key + " was born in ")
  # French: the same person, answer position and CLDR keys, in babel's French names.
  en, fr = Locale.parse("en"), Locale.parse("fr")
  by_name = {v: k for k, v in en.territories.items() if len(k) == 2}
  e, f = queries["eng"][0], queries["fra"][0]
  keys = [by_name[c[:-1]] for c in e.choices]
  assert f.key == e.key and f.answer == e.answer and f.prompt == f"{e.key} est né en"
  assert f.choices == tuple(fr.territories[k] + "." for k in keys)
  # Spelled as in the source: every English item, no clone, the French items whose true place reads the same.
  assert all(q.identical for q in queries["eng"]) and not any(q.identical for q in queries["qen"])
  assert [q.identical for q in queries["fra"]] == [q.choices[q.answer] == e.choices[e.answer]
                                                   for q, e in zip(queries["fra"], queries["eng"])]
  for lang, items in queries.items():
    for q in items:
      assert len(set(q.choices)) == 4 and 0 <= q.answer < 4
      if lang == "qen":
        src = queries["eng"][items.index(q)]
        assert q.prompt == cmap.clone(src.prompt) and q.choices == tuple(cmap.clone(c) for c in src.choices)
        assert q.answer == src.answer and cmap.is_clone(q.prompt.replace(" ", ""))
  # The true answer is among the choices exactly once (its name is unique among the choices).
  for q in queries["fra"]:
    assert q.choices.count(q.choices[q.answer]) == 1


def test_zsclt_items_share_labels_and_split_keys(clone_dir):
  from babel import Locale
  cmap = clone.load_clone_map(clone_dir)
  train, queries, skipped = xl.zsclt_items("en", ["de", "qen"], clone_map=cmap, seed=0, max_items=100)
  labels = tuple(xl.ZSCLT_LABELS.values())
  assert all(q.choices == labels for items in queries.values() for q in items)
  eng = queries["eng"]
  # Round-robin over the categories: every month and weekday, the rest shared evenly (27 each).
  counts = {c: sum(q.key.startswith(c + ":") for q in eng) for c in xl.ZSCLT_LABELS}
  assert sum(counts.values()) + sum(skipped["eng"].values()) == 100
  assert counts["month"] == 12 and counts["weekday"] == 7
  seen = [q for q in eng if q.seen]
  assert len(train) == len(seen) and 0.7 < len(seen) / len(eng) < 0.9
  assert [t["instruction"] + "\n" for t in train] == [q.prompt for q in seen]
  assert [t["output"] for t in train] == [q.choices[q.answer] for q in seen]
  # German items: the same keys and labels, babel's German names; qen: the cloned English name, labels as they are.
  de, en = Locale.parse("de"), Locale.parse("en")
  deu = {q.key: q for q in queries["deu"]}
  for q in eng[:30]:
    category, key = q.key.split(":")
    if category == "territory" and q.key in deu:
      assert deu[q.key].prompt == f"{de.territories[key]}:\n" and deu[q.key].answer == q.answer
      assert deu[q.key].seen == q.seen and deu[q.key].identical == (de.territories[key] == en.territories[key])
  qen = queries["qen"]
  assert [q.key for q in qen] == [q.key for q in eng]
  assert all(q.prompt == xl.zsclt_prompt(cmap.clone(e.prompt[:-len(":\n")])) for q, e in zip(qen, eng))


def _numpy_choice_sums(model, tokenizer, queries):
  """Independent: log-softmax (NumPy) of the model's logits over BOS + whole text, summed over each choice's tokens."""
  rows, spans = [], []
  for query in queries:
    context = tokenizer.encode(query.prompt)
    for choice in query.choices:
      if query.sep is None:
        ids = context + tokenizer.encode(choice)
      else:
        ids = tokenizer.encode(query.prompt + query.sep + choice)
        assert ids[:len(context)] == context  # Spaced English and its clone: the prompt's tokens start the whole's.
      rows.append([tokenizer.bos_id()] + ids)
      spans.append(1 + len(context))
  width = max(map(len, rows))
  tokens = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)  # Right padding: causal, never read.
  from flax import nnx
  graphdef, state = nnx.split(model)
  logits = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens), np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  sums = np.array([sum(logp[i, t - 1, r[t]] for t in range(start, len(r))) for i, (r, start) in
                   enumerate(zip(rows, spans))])
  return sums.reshape(len(queries), -1)


def test_scoring_equals_numpy_argmax_of_summed_logprobs(base, clone_dir):
  import polyglot_jax
  cmap = clone.load_clone_map(clone_dir)
  loaded = polyglot_jax.load(base)
  _, clka = xl.clka_items("en", ["qen"], n_facts=6, n_choices=4, clone_map=cmap, seed=1)
  _, zsclt, _ = xl.zsclt_items("en", [], seed=0, max_items=40)
  for queries in (clka["eng"], clka["qen"], zsclt["eng"][:8]):
    sums, truncated = xl.score_queries(loaded.model, loaded.tokenizer, queries, max_len=64, batch_size=8)
    want = _numpy_choice_sums(loaded.model, loaded.tokenizer, queries)
    assert truncated == 0
    np.testing.assert_allclose(np.stack(sums), want, rtol=1e-4, atol=1e-3)
    metrics = xl.choice_metrics(queries, sums)
    hits = [int(np.argmax(w)) == q.answer for w, q in zip(want, queries)]
    norm = [int(np.argmax(w / [len(c) for c in q.choices])) == q.answer for w, q in zip(want, queries)]
    assert metrics["accuracy"] == pytest.approx(np.mean(hits)) and metrics["n"] == len(queries)
    assert metrics["accuracy_norm"] == pytest.approx(np.mean(norm))
    assert metrics["chance"] == pytest.approx(1 / len(queries[0].choices))
  # The random model is no oracle: the choice sums differ, so argmax is decided by the numbers.
  assert np.ptp(want, axis=1).min() > 1e-3


def test_run_clka_end_to_end_then_the_cli_reuses_it(base, clone_dir, tmp_path, capsys):
  import polyglot_jax
  from polyglot_jax.cli import main
  from polyglot_jax.decode.generate import score
  workdir = str(tmp_path / "clka")
  results = xl.run_clka(base, "en", ["fr", "qen"], workdir, steps=6, learning_rate=3e-3, n_facts=8, n_choices=4,
                        clone_dir=clone_dir, seed=0)
  assert results["task"] == "clka" and results["source"] == "eng" and results["steps"] == 6
  assert list(results["languages"]) == list(results["before"]) == ["eng", "fra", "qen"]
  for table in (results["languages"], results["before"]):
    for row in table.values():
      assert row["n"] == 8 and row["chance"] == 0.25 and row["truncated"] == 0
      assert row["accuracy"] in {i / 8 for i in range(9)} and row["accuracy_norm"] in {i / 8 for i in range(9)}
  qen, eng = results["languages"]["qen"], results["languages"]["eng"]
  assert qen["unknown"] == 0.0 and qen["identical"] == 0.0 and qen["accuracy_distinct"] == qen["accuracy"]
  assert eng["identical"] == 1.0 and eng["accuracy_distinct"] is None  # No English item differs from English.
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["languages"] == results["languages"]
  # The fine-tuned copy learned the facts: a trained sentence is more likely than under the checkpoint.
  fact = json.loads(open(os.path.join(workdir, "train.jsonl")).readline())["text"]
  logps = []
  for path in (base, results["finetuned"]):
    loaded = polyglot_jax.load(path)
    ids = [loaded.tokenizer.bos_id()] + loaded.tokenizer.encode(fact)
    logps.append(float(score(loaded.model, [ids])[0].sum()))
  assert logps[1] > logps[0] + 10.0, logps  # About 30 nats in practice.
  # The CLI with the same settings reuses the fine-tuned copy and prints the same numbers.
  out_json = str(tmp_path / "out.json")
  capsys.readouterr()
  assert main(["eval", "crosslingual", "--task", "clka", "--model", base, "--source", "en", "--targets", "fr,qen",
               "--workdir", workdir, "--clone_dir", clone_dir, "--steps", "6", "--lr", "3e-3", "--n_facts", "8",
               "--json", out_json]) == 0
  printed = capsys.readouterr().out
  assert "reusing the fine-tuned checkpoint" in printed and "initialised parameters" not in printed
  assert json.load(open(out_json))["languages"] == results["languages"]
  row = results["languages"]["qen"]
  assert f"qen{8:>9}{0.25:>8.3f}{results['before']['qen']['accuracy']:>8.3f}{row['accuracy']:>8.3f}" in printed
  # Other settings in the same workdir are refused before anything runs.
  with pytest.raises(ConfigError, match=r"workdir .* holds a run with seed=0, not 1"):
    xl.run_clka(base, "en", ["fr", "qen"], workdir, steps=6, learning_rate=3e-3, n_facts=8, clone_dir=clone_dir,
                seed=1)


def test_finetune_config_keeps_the_checkpoint_model_and_tokenizer(base, clone_dir, tmp_path):
  config = xl.finetune_config(base, str(tmp_path / "train.jsonl"), kind="instruction", objective="sft", steps=50,
                              learning_rate=1e-3, seed=2)
  saved = config_lib.load_config_file(os.path.join(base, "config.json"))
  # Every model field is the checkpoint's; head_dim 0 ("d_model // num_heads") comes back resolved.
  assert config.model.to_dict() == {**saved.model.to_dict(), "head_dim": 32 // 4}
  assert config.data.tokenizer == os.path.join(clone_dir, "clone.model")
  assert (config.objective, config.data.kind, config.data.template) == ("sft", "instruction", "plain")
  assert config.init_from == base and config.data.seq_len == 64 and config.optimizer.warmup_steps == 5
  assert config.data.global_batch_size % jax.device_count() == 0


def test_bad_input_is_one_line_naming_the_value(base, demo_data, clone_dir, tmp_path, monkeypatch, capsys):
  from polyglot_jax.cli import main
  with pytest.raises(UnknownLanguageError, match="unknown language code 'xx'"):
    xl.clka_items("en", ["xx"])
  with pytest.raises(ConfigError, match=r"no 'was born in' sentence for language 'kor'; languages with one: .*eng"):
    xl.clka_items("en", ["ko"])
  with pytest.raises(ConfigError, match="target 'qen' .* needs --clone_dir"):
    xl.zsclt_items("en", ["qen"])
  with pytest.raises(ConfigError, match="--source 'qen'"):
    xl.clka_items("qen", ["en"], clone_map=clone.load_clone_map(clone_dir))
  with pytest.raises(DataError, match=r"ZS-CLT: language 'nya' has 2\d usable CLDR names .* leave 'nya' out"):
    xl.zsclt_items("en", ["ny"])
  with pytest.raises(DataError, match=r"ZS-CLT: language 'eng' has 10 .* raise max_items"):
    xl.zsclt_items("en", ["fr"], max_items=10)
  monkeypatch.setitem(xl.BORN_IN, "haw", "{name} {place}.")
  with pytest.raises(DataError, match=r"CLKA: only \d+ CLDR territories .* 'haw' names \d+: leave it out"):
    xl.clka_items("en", ["haw"])
  # A qen target with a checkpoint whose tokenizer is not the clone's.
  plain = _converted_workdir(str(tmp_path / "plain"), demo_data["tokenizer"])
  with pytest.raises(DataError, match="spells English-Clone text with .* unknown or byte pieces"):
    xl.run_clka(plain, "en", ["qen"], str(tmp_path / "w"), clone_dir=clone_dir)
  # The CLI prints the error as one line and exits 1.
  capsys.readouterr()
  assert main(["eval", "crosslingual", "--task", "clka", "--model", base, "--source", "en", "--targets", "fr,ko",
               "--workdir", str(tmp_path / "cli")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: CLKA has no 'was born in' sentence for language 'kor'") and "\n" not in err
