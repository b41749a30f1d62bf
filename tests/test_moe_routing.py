"""`polyglot-jax moe routing` (analysis/routing.py) and init_from of MoE checkpoints."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import polyglot_jax
from polyglot_jax import cli
from polyglot_jax import configs as config_lib
from polyglot_jax import loading
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.analysis import routing
from polyglot_jax.errors import ConfigError
from polyglot_jax.interop import workdir as workdir_lib
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder

from conftest import tiny_config


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_data):
  """A tiny dense converted workdir (random init) and its upcycles: 4 experts top-2 on all layers, and on layer 1."""
  root = tmp_path_factory.mktemp("routing")
  config = tiny_config(demo_data, model__init_std=0.2, data__seq_len=32)
  dense = str(root / "dense")
  os.makedirs(dense)
  one = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
  with mesh_lib.activate(one, mesh_lib.rules_tuple(config.logical_axis_rules)):
    model = Decoder(ModelConfig.from_config(config.model), nnx.Rngs(params=0))
  workdir_lib.write_params(dense, jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  with open(os.path.join(dense, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  paths = {"dense": dense, "moe": str(root / "moe"), "moe_layer1": str(root / "moe_layer1")}
  assert cli.main(["moe", "upcycle", "--from", dense, "--workdir", paths["moe"], "--num_experts", "4",
                   "--top_k", "2", "--seed", "3"]) == 0
  assert cli.main(["moe", "upcycle", "--from", dense, "--workdir", paths["moe_layer1"], "--num_experts", "3",
                   "--top_k", "1", "--layers", "1"]) == 0
  return paths


def _records(demo_data):
  """Held-out documents of three scripts, an alias code ('en'), an unregistered code and one long document."""
  by_lang = {}
  for line in open(demo_data["eval"], encoding="utf-8"):
    r = json.loads(line)
    by_lang.setdefault(r["lang"], []).append(r["text"])
  records = [{"text": t, "lang": "eng"} for t in by_lang["eng"][:2]]
  records += [{"text": by_lang["eng"][2], "lang": "en"}]  # The registry's alias of eng.
  records += [{"text": by_lang["eng"][3], "lang": "eng"}]  # The 4th eng document: over max_docs=3.
  records += [{"text": t, "lang": "fra"} for t in by_lang["fra"][:3]]
  records += [{"text": " ".join(by_lang["zho"][:4]), "lang": "zho"}]  # Several windows of 16 tokens.
  records += [{"text": by_lang["deu"][0], "lang": "xyz"}]  # Not in the registry.
  return records


@functools.partial(jax.jit, static_argnums=0)
def _router_logits(graphdef, state, tokens_1xL):
  model = nnx.merge(graphdef, state)
  positions = jnp.arange(tokens_1xL.shape[1])[None]
  return model(tokens_1xL, jnp.ones_like(tokens_1xL), positions, return_aux=("router_logits",))[1]["router_logits"]


def numpy_shares(model, tokenizer, records, seq_len, max_docs):
  """The shares recomputed per window, unpadded: top-k of the router logits and softmax, in NumPy float64."""
  k = model.cfg.moe_top_k
  graphdef, state = nnx.split(model)
  alias = {"en": "eng"}
  docs, chosen, probs, tokens = {}, {}, {}, {}
  for r in records:
    lang = alias.get(r["lang"], r["lang"])
    if docs.get(lang, 0) >= max_docs:
      continue
    docs[lang] = docs.get(lang, 0) + 1
    ids = [tokenizer.bos_id()] + tokenizer.encode(r["text"]) + [tokenizer.eos_id()]
    for start in range(0, len(ids), seq_len):
      window = np.asarray(ids[start:start + seq_len], np.int32)[None]
      logits = np.asarray(_router_logits(graphdef, state, jnp.asarray(window)), np.float64)  # [M, L, N]
      top = np.argsort(-logits, axis=-1)[..., :k]
      member = (top[..., None] == np.arange(logits.shape[-1])).any(-2)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      chosen[lang] = chosen.get(lang, 0) + member.sum(1)
      probs[lang] = probs.get(lang, 0) + p.sum(1)
      tokens[lang] = tokens.get(lang, 0) + window.shape[1]
  return docs, tokens, {c: chosen[c] / tokens[c] for c in docs}, {c: probs[c] / tokens[c] for c in docs}


def test_routing_shares_equal_a_numpy_recomputation_from_the_router_logits(models, demo_data):
  loaded = polyglot_jax.load(models["moe"])
  records = _records(demo_data)
  # batch_size 3: batches mix languages and carry padded rows and padded positions.
  got = routing.routing_shares(loaded.model, loaded.tokenizer, records, batch_size=3, seq_len=16, max_docs=3)
  docs, tokens, share, prob = numpy_shares(loaded.model, loaded.tokenizer, records, 16, 3)
  assert got["languages"] == ["eng", "fra", "zho", "xyz"]
  assert got["docs"] == docs == {"eng": 3, "fra": 3, "zho": 1, "xyz": 1}
  assert got["tokens"] == tokens and tokens["zho"] > 3 * 16
  assert got["unknown_languages"] == {"xyz": 1}
  assert (got["num_experts"], got["top_k"], got["moe_layers"]) == (4, 2, [0, 1])
  for code in docs:
    np.testing.assert_allclose(got["top_k_share"][code], share[code], atol=1e-6, err_msg=code)
    np.testing.assert_allclose(got["mean_prob"][code], prob[code], atol=1e-5, err_msg=code)
    np.testing.assert_allclose(np.sum(got["top_k_share"][code], -1), 2.0, atol=1e-6)  # k experts per token.
  # Routing is not uniform on this model: the test would not see a mix-up of experts otherwise.
  assert np.ptp(np.asarray(got["top_k_share"]["eng"])) > 0.1


def test_a_dense_model_is_a_one_line_error(models, demo_data, tmp_path, capsys):
  dense = polyglot_jax.load(models["dense"])
  with pytest.raises(ConfigError, match=r"no MoE layers \(config.model.num_experts=0\)"):
    routing.routing_shares(dense.model, dense.tokenizer, [{"text": "hello", "lang": "eng"}])
  capsys.readouterr()
  code = cli.main(["moe", "routing", "--model", models["dense"], "--data", demo_data["eval"], "--out",
                   str(tmp_path / "out")])
  err = capsys.readouterr().err.strip()
  assert code == 1 and "\n" not in err
  assert f"--model {models['dense']} is dense (config.model.num_experts=0)" in err and "moe upcycle" in err


def test_routing_command_writes_the_shares_the_heatmap_and_the_table(models, demo_data, tmp_path, capsys):
  data = str(tmp_path / "texts.jsonl")
  with open(data, "w", encoding="utf-8") as f:
    for r in _records(demo_data):
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  out = str(tmp_path / "routing")
  capsys.readouterr()
  assert cli.main(["moe", "routing", "--model", models["moe"], "--data", data, "--out", out, "--max_docs", "2"]) == 0
  printed = capsys.readouterr().out
  saved = json.load(open(os.path.join(out, "routing.json"), encoding="utf-8"))
  loaded = polyglot_jax.load(models["moe"])
  want = routing.routing_shares(loaded.model, loaded.tokenizer, _records(demo_data), seq_len=32, max_docs=2)
  assert saved["seq_len"] == 32  # The model's data.seq_len.
  for key in ("languages", "docs", "tokens", "unknown_languages"):
    assert saved[key] == want[key], key
  np.testing.assert_allclose(saved["top_k_share"]["fra"], want["top_k_share"]["fra"], atol=1e-6)
  assert os.path.getsize(os.path.join(out, "routing.png")) > 10_000
  eng = [row[0] for row in want["top_k_share"]["eng"]]  # Expert 0's share in layers 0 and 1.
  row = next(line.split() for line in printed.splitlines() if line.startswith("eng "))
  assert row[:3] == ["eng", "2", str(want["tokens"]["eng"])]
  np.testing.assert_allclose([float(x) for x in row[3:]], eng + [np.mean(eng)], atol=5e-4)
  assert "note: 'xyz' (1 docs) is not a registered language code; its tokens are counted under it" in printed


def test_init_from_takes_the_moe_settings_of_our_checkpoints(models, demo_data, tmp_path):
  def start(path, explicit=(), **overrides):
    config = tiny_config(demo_data, init_from=path, **overrides)
    return loading.apply_init_from(config, explicit).model

  m = start(models["moe"])
  assert (m.num_experts, m.moe_top_k, m.moe_layers, m.scan_layers) == (4, 2, "all", True)
  m = start(models["moe_layer1"])  # Layer 1 only: unrolled, as the checkpoint is.
  assert (m.num_experts, m.moe_top_k, m.moe_layers, m.scan_layers) == (3, 1, "1", False)
  m = start(models["dense"], model__num_experts=4)  # The config's experts give way to the dense checkpoint.
  assert m.num_experts == 0
  m = start(models["moe"], ["model.num_experts"], model__num_experts=4)  # An explicit flag that agrees is fine.
  assert m.num_experts == 4
  with pytest.raises(ConfigError, match="--config.model.moe_top_k=1 contradicts config.init_from=.*moe_top_k=2"):
    start(models["moe"], ["model.moe_top_k"], model__moe_top_k=1)
  # A Hugging Face directory holds a dense model and no MoE settings: the run's own stay.
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2048, "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}))
  m = start(str(hf), model__num_experts=4, model__moe_top_k=1)
  assert (m.num_experts, m.moe_top_k, m.d_model) == (4, 1, 32)
