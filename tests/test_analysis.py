"""Analysis tools: the neuron-mask intervention, LAPE and the logit lens, against NumPy references."""

import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import configs as config_lib
from polyglot_jax import decode
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.analysis import commands, lape, logit_lens
from polyglot_jax.errors import DataError
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder

import reference


def random_decoder(cfg, scale):
  """A random decoder for ``cfg``, built without compiling anything (abstract init, then NumPy values).

  Weights are N(0, scale²) from a fixed seed; norm scales are 1.
  """
  with mesh_lib.activate(mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]), config_lib.DEFAULT_RULES):
    abstract = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=1)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(0)

  def fill(path, x):
    if str(path[-1].key) == "scale":
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)


@functools.cache
def _base_model(scan, vocab_size):
  cfg = ModelConfig(vocab_size=vocab_size, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=0,
                    mlp_dim=64, init_std=0.2, attention_block=0, scan_layers=scan)
  return cfg, random_decoder(cfg, 0.2)


def make_model(scan=True, vocab_size=128):
  """(config, a fresh copy of the cached random model): tests may change the copy's parameters."""
  cfg, model = _base_model(scan, vocab_size)
  return cfg, nnx.clone(model)


_FORWARDS = {}


def forward(model, rows, width=32):
  """Logits [B, T, V] of B ≤ 2 rows of T tokens, right-padded to ``width``: one compile per model structure."""
  rows = np.atleast_2d(np.asarray(rows, np.int32))
  graphdef, state = nnx.split(model)
  if graphdef not in _FORWARDS:
    _FORWARDS[graphdef] = jax.jit(lambda st, x, seg: nnx.merge(graphdef, st)(x, seg))
  tokens = np.zeros((2, width), np.int32)
  tokens[:len(rows), :rows.shape[1]] = rows
  segments = np.zeros((2, width), np.int32)
  segments[:len(rows), :rows.shape[1]] = 1
  out = _FORWARDS[graphdef](state, jnp.asarray(tokens), jnp.asarray(segments))
  return np.asarray(out)[:len(rows), :rows.shape[1]]


def params_np(model):
  return jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def set_params(model, pure):
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  nnx.update(model, state)


def reference_layers(params, cfg, tokens):
  """NumPy float64 replay of one unpadded row: residual stream [L+1, T, E] and gate pre-activations [L, T, F]."""
  p = reference._to64(params)
  tokens = np.asarray(tokens)[None]
  length = tokens.shape[1]
  positions = np.arange(length)[None]
  x = p["embedding"][tokens]
  residuals, gates = [x[0]], []
  for i in range(cfg.num_layers):
    layer = reference._layer(p["blocks"], i, cfg.scan_layers)
    x = reference.attention_residual(x, layer, cfg, positions)
    m = layer["mlp"]
    y = reference.rms_norm(x, layer["mlp_norm"]["scale"], cfg.norm_eps)
    gate = y @ m["gate_proj"]
    gates.append(gate[0])
    x = x + (gate / (1 + np.exp(-gate)) * (y @ m["up_proj"])) @ m["down_proj"]
    residuals.append(x[0])
  return np.stack(residuals), np.stack(gates)


# ----------------------------------------------------------------------------------------------------------------
# The intervention.


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_deactivate_equals_zeroed_down_proj_rows_and_leaves_the_model_alone(scan):
  cfg, model = make_model(scan)
  neurons = {0: [1, 5], 1: [3]}
  tokens = np.arange(3, 27).reshape(2, 12) * 5 % 128
  before = forward(model, tokens)
  off = lape.deactivate(model, neurons)
  # Reference: a neuron whose down_proj row is zero writes nothing to the residual stream.
  pure = params_np(model)
  for layer, idx in neurons.items():
    if scan:
      pure["blocks"]["mlp"]["down_proj"][layer, idx] = 0.0
    else:
      pure["blocks"][layer]["mlp"]["down_proj"][idx] = 0.0
  zeroed = nnx.clone(model)
  set_params(zeroed, pure)
  got = forward(off, tokens)
  np.testing.assert_allclose(got, forward(zeroed, tokens), atol=1e-6)
  assert np.abs(got - before).max() > 1e-4
  # The caller's model: same logits, no mask, and no state beyond its parameters.
  np.testing.assert_array_equal(forward(model, tokens), before)
  mlp = model.blocks.mlp if scan else model.blocks[0].mlp
  assert getattr(mlp, "neuron_mask", None) is None
  assert not nnx.state(model, lape.NeuronMask)
  assert jax.tree.structure(params_np(off)) == jax.tree.structure(params_np(model))
  expected = np.ones((2, 64), np.float32)
  expected[0, [1, 5]] = expected[1, 3] = 0.0
  np.testing.assert_array_equal(lape.neuron_mask(off), expected)
  # Generation (the mask rides in generate's lax.scan carry) against a greedy recompute of the reference.
  seq = [5, 17, 30]
  new = decode.generate(off, [seq], 3)[0]
  for _ in range(3):
    seq.append(int(np.argmax(forward(zeroed, [seq])[0, -1])))
  assert new == seq[3:]
  # Scoring against the reference's log-softmax.
  logits = forward(zeroed, tokens[:1])[0].astype(np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
      logits.max(-1, keepdims=True)
  want = logp[np.arange(11), tokens[0, 1:]]
  np.testing.assert_allclose(decode.score(off, [tokens[0].tolist()])[0], want, atol=1e-5)


def test_deactivate_rejects_out_of_range_neurons():
  _, model = make_model()
  with pytest.raises(ValueError, match="layer 2 is out of range"):
    lape.deactivate(model, {2: [0]})
  with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
    lape.deactivate(model, {0: [64]})


# ----------------------------------------------------------------------------------------------------------------
# LAPE.


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_activation_probabilities_match_numpy(scan):
  cfg, model = make_model(scan)
  rng = np.random.default_rng(0)
  # The 40-token text is cut into windows of 16, 16 and 8 tokens; each is its own sequence.
  texts = {"a": [rng.integers(1, 128, n).tolist() for n in (5, 40, 9)],
           "b": [rng.integers(1, 128, n).tolist() for n in (12, 3)]}
  langs, probs = lape.activation_probabilities(model, texts, batch_size=2, seq_len=16)
  assert langs == ["a", "b"] and probs.shape == (2, 2, 64)
  params = params_np(model)
  for n, lang in enumerate(langs):
    windows = [seq[i:i + 16] for seq in texts[lang] for i in range(0, len(seq), 16)]
    active = sum((reference_layers(params, cfg, w)[1] > 0).sum(1) for w in windows)
    num_tokens = sum(len(w) for w in windows)
    # A gate within float32 rounding of 0 may land on either side: allow one token's worth.
    np.testing.assert_allclose(probs[n], active / num_tokens, atol=1.01 / num_tokens)
  assert 0.2 < probs.mean() < 0.8


def planted_model(scan, layer=1, neuron=5):
  """Residual stream = embeddings; dim 0 is +3 on tokens 10..49 (language A), −3 on 50..89 (B).

  Every gate reads dims 1.. at random, except gate ``neuron`` of ``layer``,
  which reads dim 0 only: it is active on A's tokens and never on B's.
  """
  cfg, model = make_model(scan)
  pure = params_np(model)
  rng = np.random.default_rng(1)
  emb = rng.normal(size=pure["embedding"].shape).astype(np.float32)
  emb[:, 0] = 0.0
  emb[10:50, 0], emb[50:90, 0] = 3.0, -3.0
  pure["embedding"] = emb
  for i in range(cfg.num_layers):
    blk = pure["blocks"] if scan else pure["blocks"][i]
    sel = (lambda a: a[i]) if scan else (lambda a: a)
    sel(blk["attn"]["o_proj"])[...] = 0.0
    sel(blk["mlp"]["down_proj"])[...] = 0.0
    gate = sel(blk["mlp"]["gate_proj"])
    gate[...] = rng.normal(size=gate.shape)
    gate[0] = 0.0
    if i == layer:
      gate[:, neuron] = 0.0
      gate[0, neuron] = 1.0
  set_params(model, pure)
  return cfg, model


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_lape_finds_the_planted_language_neuron(scan):
  cfg, model = planted_model(scan)
  rng = np.random.default_rng(2)
  texts = {"A": [rng.integers(10, 50, 24).tolist() for _ in range(4)],
           "B": [rng.integers(50, 90, 24).tolist() for _ in range(4)]}
  langs, probs = lape.activation_probabilities(model, texts, batch_size=4)
  assert probs[0, 1, 5] == 1.0 and probs[1, 1, 5] == 0.0
  # top_rate 0.01 of 2 × 64 neurons selects round(1.28) = 1: the only zero-entropy neuron that passes the filter.
  assert lape.select_neurons(probs, langs, top_rate=0.01) == {"A": {1: [5]}, "B": {}}
  # Deactivating it leaves this model's logits alone (its down_proj is zero) but zeroes its mask entry.
  assert lape.neuron_mask(lape.deactivate(model, {1: [5]}))[1, 5] == 0.0


def reference_select(probs, top_rate, filter_rate, bar_ratio):
  """Tang et al.'s identify.py, transliterated from torch to NumPy."""
  activation_probs = np.moveaxis(probs, 0, -1)  # layer × inter × lang
  with np.errstate(invalid="ignore"):
    normed = activation_probs / activation_probs.sum(-1, keepdims=True)
  normed[np.isnan(normed)] = 0
  log_probs = np.where(normed > 0, np.log(np.where(normed > 0, normed, 1)), 0)
  entropy = -np.sum(normed * log_probs, -1)
  flat = activation_probs.flatten()
  top_prob_value = np.sort(flat)[round(len(flat) * filter_rate) - 1]
  top_position = (activation_probs > top_prob_value).sum(-1)
  entropy[top_position == 0] = np.inf
  index = np.argsort(entropy.flatten(), kind="stable")[:round(entropy.size * top_rate)]
  rows, cols = index // entropy.shape[1], index % entropy.shape[1]
  selected = activation_probs[rows, cols].T  # lang × n
  bar = np.sort(flat)[round(len(flat) * bar_ratio) - 1]
  out = [dict() for _ in range(probs.shape[0])]
  for lang, i in zip(*np.nonzero(selected > bar)):
    out[lang].setdefault(int(rows[i]), []).append(int(cols[i]))
  return [{k: sorted(v) for k, v in d.items()} for d in out]


def test_select_neurons_matches_the_papers_rule():
  rng = np.random.default_rng(3)
  probs = rng.beta(0.5, 2.0, size=(3, 4, 50))
  probs[:, 0, :3] = 0.0  # Dead neurons: entropy 0.
  for top_rate, filter_rate, bar in ((0.01, 0.95, 0.95), (0.05, 0.9, 0.8), (0.02, 0.5, 0.99)):
    got = lape.select_neurons(probs, ["x", "y", "z"], top_rate=top_rate, filter_rate=filter_rate,
                              activation_bar_ratio=bar)
    assert list(got.values()) == reference_select(probs, top_rate, filter_rate, bar)


def test_select_neurons_by_hand():
  probs = np.zeros((3, 1, 10))
  probs[:, 0, 1] = [0.99, 0.98, 0.0]  # Entropy ln 2, assigned to two languages.
  probs[:, 0, 2] = [0.0, 0.0, 0.97]  # Entropy 0.
  probs[:, 0, 3:] = np.linspace(0.1, 0.5, 7)  # Entropy ln 3, never above the filter.
  # Neuron 0 is dead (entropy 0 too). k = round(30 · 0.9) = 27: the 27th smallest value is 0.5,
  # which only neurons 1 and 2 exceed; they are the only candidates even when 5 are wanted.
  for top_rate in (0.2, 0.5):
    got = lape.select_neurons(probs, ["x", "y", "z"], top_rate=top_rate, filter_rate=0.9, activation_bar_ratio=0.9)
    assert got == {"x": {0: [1]}, "y": {0: [1]}, "z": {0: [2]}}
  # One neuron: the lowest entropy (neuron 2).
  assert lape.select_neurons(probs, ["x", "y", "z"], top_rate=0.1, filter_rate=0.9, activation_bar_ratio=0.9) == \
      {"x": {}, "y": {}, "z": {0: [2]}}
  with pytest.raises(ValueError, match="want \\[2 languages"):
    lape.select_neurons(probs, ["x", "y"])


def test_deactivation_table_against_direct_scores():
  _, model = make_model(False)
  rng = np.random.default_rng(4)
  texts = {lang: [rng.integers(1, 128, 20).tolist() for _ in range(4)] for lang in ("p", "q")}
  neurons = {"p": {0: [1, 2], 1: [7]}, "q": {}}
  table = lape.deactivation_table(model, texts, neurons, seed=5, batch_size=4)
  logps = np.concatenate(decode.score(model, texts["q"]))
  assert table["base"]["q"] == pytest.approx(float(np.exp(-logps.mean())), rel=1e-5)
  assert table["deactivated"]["p"]["q"] == pytest.approx(
      lape.perplexity(lape.deactivate(model, neurons["p"]), texts["q"], batch_size=4))
  assert table["deactivated"]["p"]["p"] != pytest.approx(table["base"]["p"])
  expected_random = lape.random_like(neurons["p"], 64, np.random.default_rng(5))
  assert table["random"]["p"]["p"] == pytest.approx(
      lape.perplexity(lape.deactivate(model, expected_random), texts["p"], batch_size=4))
  assert table["num_neurons"] == {"p": 3, "q": 0}
  assert table["delta"]["q"] == {"p": 0.0, "q": 0.0} and table["random_delta"]["q"] == {"p": 0.0, "q": 0.0}


# ----------------------------------------------------------------------------------------------------------------
# The logit lens.


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_layer_distributions_match_numpy(scan):
  cfg, model = make_model(scan)
  tokens = [3, 44, 17, 90, 5, 61, 8]
  got = logit_lens.layer_distributions(model, tokens)
  assert got.shape == (cfg.num_layers + 1, cfg.vocab_size)
  params = params_np(model)
  residuals, _ = reference_layers(params, cfg, tokens)
  h = reference.rms_norm(residuals[:, -1], np.float64(params["final_norm"]["scale"]), cfg.norm_eps)
  logits = h @ np.float64(params["embedding"]).T
  want = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), atol=1e-6)
  # The last layer is the model's own next-token distribution.
  own = np.asarray(jax.nn.softmax(forward(model, tokens)[0, -1]))
  np.testing.assert_allclose(got[-1], own, atol=1e-6)


@pytest.fixture(scope="module")
def tokenizer(demo_data):
  import sentencepiece as spm
  return spm.SentencePieceProcessor(model_file=demo_data["tokenizer"])


@pytest.mark.parametrize("word", ["Chine", "中国", "the"])
def test_word_token_sets_follow_the_prefix_rule(tokenizer, word):
  got = logit_lens.word_token_sets(tokenizer, word)
  # Brute force over the vocabulary: pieces that, without their ▁, are a non-empty prefix of the word.
  want = set()
  for i in range(tokenizer.get_piece_size()):
    piece = tokenizer.id_to_piece(i)
    stripped = piece[1:] if piece.startswith("\u2581") else piece
    if stripped and word.startswith(stripped) and i != tokenizer.unk_id():
      want.add(i)
  byte = tokenizer.piece_to_id(f"<0x{word.encode()[0]:02X}>")
  if byte != tokenizer.unk_id():
    want.add(byte)
  first = [i for i in tokenizer.encode(word) if tokenizer.id_to_piece(i) != "\u2581"][0]
  assert first in got
  assert got == want | {first}


def test_translation_items_prompt_format():
  items = logit_lens.translation_items("fr", "zh", k_shot=2, limit=5, seed=1)
  assert len(items) == 5
  from babel import Locale
  zh, en = Locale("zh"), Locale("en")
  for item in items:
    lines = item["prompt"].split("\n")
    assert len(lines) == 3
    assert lines[-1] == f'Français: "{item["source_word"]}" - 中文: "'
    for line in lines[:-1]:
      assert line.startswith('Français: "') and '" - 中文: "' in line and line.endswith('"')
    category, code = item["code"].split(":")
    assert getattr(zh, category)[code] == item["target_word"]
    assert getattr(en, category)[code] == item["english_word"]
  assert items == logit_lens.translation_items("fr", "zh", k_shot=2, limit=5, seed=1)
  with pytest.raises(DataError, match="'xx' is not a CLDR locale"):
    logit_lens.translation_items("xx", "zh")


# ----------------------------------------------------------------------------------------------------------------
# The commands, on a tiny model with the demo tokenizer (polyglot_jax.load replaced).


@pytest.fixture
def fake_load(monkeypatch, tokenizer):
  import polyglot_jax
  _, model = make_model(True, vocab_size=tokenizer.get_piece_size())
  monkeypatch.setattr(polyglot_jax, "load", lambda path, step=None: types.SimpleNamespace(
      model=model, tokenizer=tokenizer, config=None))
  return model


def test_logit_lens_command_writes_curves_that_match_the_lens(fake_load, tokenizer, tmp_path, capsys):
  out = tmp_path / "lens"
  assert commands.main(["logit-lens", "--model", "m", "--source", "fr", "--target", "zh", "--out", str(out),
                        "--limit", "3", "--k_shot", "2", "--batch_size", "2"]) == 0
  record = json.loads((out / "logit_lens.json").read_text())
  assert (out / "logit_lens.png").stat().st_size > 0
  assert record["layers"] == [0, 1, 2] and record["num_items"] == 3 == len(record["items"])
  target = []
  for item in record["items"]:
    probs = logit_lens.layer_distributions(fake_load, [tokenizer.bos_id()] + tokenizer.encode(item["prompt"]))
    target.append(probs[:, sorted(logit_lens.word_token_sets(tokenizer, item["target_word"]))].sum(-1))
  np.testing.assert_allclose(record["target_prob"], np.mean(target, 0), atol=1e-6)
  assert "P(target)" in capsys.readouterr().out


def test_lape_command_end_to_end(fake_load, tmp_path, capsys):
  path = tmp_path / "texts.jsonl"
  lines = [{"text": t, "lang": lang} for lang, ts in
           (("en", ["the cat sat on the mat", "a dog ran home", "we like tea"]),
            ("fr", ["le chat dort", "un chien court vite", "nous aimons le thé"])) for t in ts]
  path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n")
  out = tmp_path / "lape"
  assert commands.main(["lape", "--model", "m", "--input", str(path), "--out", str(out), "--top_rate", "0.05",
                        "--eval_fraction", "0.34", "--batch_size", "2"]) == 0
  record = json.loads((out / "lape.json").read_text())
  assert record["languages"] == ["en", "fr"] and record["settings"]["held_out"]
  assert np.load(out / "activation_probs.npy").shape == (2, 2, 64)
  assert record["layer_widths"] == [64, 64] and record["moe_layers"] == [] and record["mlp_dim"] == 64
  assert set(record["table"]["delta"]) == {"en", "fr"}
  assert (out / "lape_neurons.png").stat().st_size > 0
  assert "perplexity change" in capsys.readouterr().out


def test_lape_command_names_the_bad_line(monkeypatch, tmp_path):
  import polyglot_jax
  monkeypatch.setattr(polyglot_jax, "load", lambda *a, **k: pytest.fail("loaded a model for bad input"))
  path = tmp_path / "texts.jsonl"
  path.write_text('{"text": "a", "lang": "en"}\n{"text": "b"}\n')
  with pytest.raises(DataError, match=r"texts.jsonl:2: field 'lang' is missing"):
    commands.main(["lape", "--model", "m", "--input", str(path), "--out", str(tmp_path)])
  path.write_text('{"text": "a", "lang": "en"}\n\n{"text": "b", "lang": "en"}\n')
  with pytest.raises(DataError, match="two or more"):
    commands.main(["lape", "--model", "m", "--input", str(path), "--out", str(tmp_path)])
  path.write_text('{"text": "a", "lang": "en"}\nnot json\n')
  with pytest.raises(DataError, match=r"texts.jsonl:2: not a JSON object"):
    commands.main(["lape", "--model", "m", "--input", str(path), "--out", str(tmp_path)])
