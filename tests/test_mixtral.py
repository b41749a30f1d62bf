"""Mixtral interop: our top-k MoE (no shared experts, every layer MoE) ↔ Hugging Face MixtralForCausalLM.

Logits parity with transformers both ways, bit-exact round trips (the per-expert
layout transformers writes and its fused one), init_from's reader, and a
one-line error for each model that has no Mixtral form. Helpers come from
tests/test_interop.py; models are tiny (d_model 32, 2 layers, 4 experts top-2).
"""

import json
import os

import jax
import numpy as np
import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax.interop import ConvertError, export_hf, import_hf, load_params
from polyglot_jax.interop import workdir as workdir_lib
from polyglot_jax.models.config import ModelConfig
from test_interop import (assert_trees_equal, config_of, our_logits, random_params, run_cli, save_hf, torch_logits,
                          write_our_workdir)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Max abs logit difference, float32 on both sides; measured 3.0e-7..4.2e-7 (docs/interop.md, "Mixtral format").
TOL = 2e-6
VOCAB, D, LAYERS, HEADS, KV_HEADS, MLP, EXPERTS, TOP_K = 100, 32, 2, 4, 2, 48, 4, 2
FIELDS = dict(vocab_size=VOCAB, d_model=D, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=0,
              mlp_dim=MLP, norm_eps=1e-5, rope_theta=1e6, tie_embeddings=False, num_experts=EXPERTS,
              moe_top_k=TOP_K, moe_layers="all")
MOE = ("num_experts", "moe_top_k", "moe_layers", "moe_shared_experts")


def quiet(_):
  pass


def tokens_for(seed=0):
  """A 2 × 12 batch without padding."""
  return np.random.default_rng(seed).integers(0, VOCAB, (2, 12))


def our_moe_params(fields, seed=0, dtype=np.float32):
  """Random parameters with a router large enough that no token is near a top-k tie."""
  params = random_params(ModelConfig(**{**fields, "scan_layers": True}), seed=seed, dtype=dtype)
  blocks = dict(params["blocks"])
  blocks["moe"] = {**blocks["moe"], "router": (blocks["moe"]["router"] * 20).astype(dtype)}
  return {**params, "blocks": blocks}


def make_mixtral(tied, seed=0):
  """A random transformers MixtralForCausalLM; norms randomised too, so that a missed one shows."""
  config = transformers.MixtralConfig(
      vocab_size=VOCAB, hidden_size=D, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
      num_key_value_heads=KV_HEADS, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, tie_word_embeddings=tied,
      rope_parameters={"rope_type": "default", "rope_theta": 5e5}, rms_norm_eps=1e-6)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((1.0 + 0.1 * torch.randn_like(p)) if "norm" in name else
              (1.0 if name.endswith("mlp.gate.weight") else 0.05) * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """Our float32 MoE workdir, its parameters and its --to_hf export (through the CLI, default architecture)."""
  root = tmp_path_factory.mktemp("mixtral")
  params = our_moe_params(FIELDS)
  ours = str(root / "ours")
  write_our_workdir(ours, FIELDS, params)
  hf_dir = str(root / "hf")
  code, err = run_cli("--to_hf", "--workdir", ours, "--out", hf_dir)
  assert code == 0, err
  return ours, params, hf_dir


def test_export_writes_mixtral_config_and_per_expert_tensors(exported):
  _, _, hf_dir = exported
  hf = json.load(open(os.path.join(hf_dir, "config.json")))
  assert hf["architectures"] == ["MixtralForCausalLM"] and hf["model_type"] == "mixtral"
  assert (hf["num_local_experts"], hf["num_experts_per_tok"]) == (EXPERTS, TOP_K)
  assert hf["rope_parameters"]["rope_theta"] == 1e6 and hf["rms_norm_eps"] == 1e-5
  assert hf["tie_word_embeddings"] is False and hf["sliding_window"] is None
  assert hf["router_aux_loss_coef"] == pytest.approx(0.01 / TOP_K)  # optimizer.moe_balance_weight / k.
  from safetensors import safe_open
  with safe_open(os.path.join(hf_dir, "model.safetensors"), framework="np") as f:
    shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  assert shapes["model.layers.1.block_sparse_moe.gate.weight"] == (EXPERTS, D)
  assert shapes["model.layers.1.block_sparse_moe.experts.3.w1.weight"] == (MLP, D)
  assert shapes["model.layers.1.block_sparse_moe.experts.3.w2.weight"] == (D, MLP)
  assert not [name for name in shapes if ".mlp." in name]
  assert len(shapes) == 3 + LAYERS * (4 + 2 + 1 + 3 * EXPERTS)  # embed/norm/head; attn, norms, router, experts.


def test_ours_to_mixtral_logits_match_transformers(exported):
  _, params, hf_dir = exported
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  assert type(model).__name__ == "MixtralForCausalLM"
  tokens = tokens_for()
  diff = np.abs(our_logits(ModelConfig(**FIELDS), params, tokens) - torch_logits(model, tokens))
  print(f"ours → mixtral: max abs logit diff {diff.max():.2e}")
  assert diff.max() < TOL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_exact(exported, dtype, tmp_path):
  if dtype == "float32":
    _, params, hf_dir = exported
  else:  # bfloat16 parameters, tied embeddings, unscanned layers in the source config.
    fields = {**FIELDS, "tie_embeddings": True, "scan_layers": False, "param_dtype": "bfloat16"}
    params = our_moe_params(fields, seed=1, dtype=np.dtype(jax.numpy.bfloat16))
    ours = str(tmp_path / "ours")
    write_our_workdir(ours, fields, params)
    hf_dir = str(tmp_path / "hf")
    assert export_hf(ours, hf_dir, progress=quiet)["architecture"] == "mixtral"
  back = str(tmp_path / "back")
  info = import_hf(hf_dir, back, dtype=dtype, progress=quiet)
  assert {key: info["model"][key] for key in MOE} == dict(num_experts=EXPERTS, moe_top_k=TOP_K, moe_layers="all",
                                                        moe_shared_experts=0)
  config = config_of(back)
  assert config.model.moe_dispatch == "dropless" and config.model.num_experts == EXPERTS
  assert_trees_equal(workdir_lib.read_params(back)[0], workdir_lib.stack(params))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_mixtral_to_ours_logits_match_and_both_layouts_read_the_same(tied, tmp_path):
  model = make_mixtral(tied)
  legacy = save_hf(model, tmp_path / "legacy")  # transformers' default: block_sparse_moe.experts.j.w1...
  workdir = str(tmp_path / "ours")
  import_hf(legacy, workdir, progress=quiet)
  config = config_of(workdir)
  assert config.model.tie_embeddings == tied and config.model.rope_theta == 5e5
  params = load_params(workdir, config)
  tokens = tokens_for(1)
  diff = np.abs(our_logits(ModelConfig.from_config(config.model), params, tokens) - torch_logits(model, tokens))
  print(f"mixtral tied={tied} → ours: max abs logit diff {diff.max():.2e}")
  assert diff.max() < TOL
  # The fused layout (mlp.experts.gate_up_proj / down_proj, mlp.gate) reads bit for bit the same, and so does
  # the HF directory itself through init_from's reader.
  fused = save_hf(model, tmp_path / "fused", save_original_format=False)
  assert_trees_equal(load_params(fused, config), params)
  assert_trees_equal(load_params(legacy, config), params)


def test_init_from_a_mixtral_directory_names_the_moe_settings(exported):
  _, _, hf_dir = exported
  config = config_lib.default_config()
  config.lock()
  for key, value in FIELDS.items():
    if key not in MOE:
      config_lib.set_key(config, f"model.{key}", value, from_string=False)
  with pytest.raises(ConvertError, match=r"config.model.num_experts=0 but .*config.json has num_local_experts=4; "
                                         r"set --config.model.num_experts=4"):
    load_params(hf_dir, config)
  config.model.num_experts = EXPERTS
  config.model.moe_top_k = 1
  with pytest.raises(ConvertError, match="config.model.moe_top_k=1 but .* has num_experts_per_tok=2"):
    load_params(hf_dir, config)
  # init_from the directory takes its MoE settings, as it takes the dense shape.
  from polyglot_jax import loading
  run = config_lib.default_config()
  run.lock()
  run.init_from = hf_dir
  loading.apply_init_from(run, ())
  assert (run.model.num_experts, run.model.moe_top_k, run.model.moe_layers) == (EXPERTS, 2, "all")


# ---------------------------------------------------------------------------
# Models without a Mixtral form: one line each, naming the key; nothing is written
# ---------------------------------------------------------------------------


def config_only_workdir(path, fields):
  """A workdir with just config.json: the refusals come before any parameter is read."""
  config = config_lib.default_config()
  config.lock()
  for key, value in fields.items():
    config_lib.set_key(config, f"model.{key}", value, from_string=False)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))


BAD_EXPORTS = {
    "shared_experts": (dict(moe_shared_experts=1), [],
                       "config.model.moe_shared_experts=1: Mixtral has no shared experts"),
    "some_layers": (dict(moe_layers="1", scan_layers=False), [],
                    "config.model.moe_layers='1' makes only layers [1] of 2 MoE, but Mixtral has an MoE FFN in "
                    "every layer"),
    "qkv_bias": (dict(qkv_bias=True), [], "config.model.qkv_bias=True: Mixtral has no q/k/v biases"),
    "moe_as_llama": ({}, ["--architecture", "llama"],
                     "config.model.num_experts=4: an MoE model exports only as --architecture mixtral, not llama"),
    "dense_as_mixtral": (dict(num_experts=0), ["--architecture", "mixtral"],
                         "--architecture mixtral needs an MoE model but config.model.num_experts=0"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPORTS))
def test_bad_export_is_one_line_naming_the_key(case, tmp_path):
  changes, args, message = BAD_EXPORTS[case]
  ours = str(tmp_path / "ours")
  config_only_workdir(ours, {**FIELDS, **changes})
  out = str(tmp_path / "hf")
  code, err = run_cli("--to_hf", "--workdir", ours, "--out", out, *args)
  lines = err.strip().splitlines()
  assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
  assert message in lines[0]
  assert not os.path.exists(out)


def test_bad_mixtral_config_is_refused(exported, tmp_path):
  import shutil
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(exported[2], hf_dir)
  path = os.path.join(hf_dir, "config.json")
  hf = json.load(open(path))
  json.dump({**hf, "num_experts_per_tok": 5}, open(path, "w"))
  code, err = run_cli("--from_hf", hf_dir, "--workdir", str(tmp_path / "ours"))
  assert code == 1 and "num_experts_per_tok=5 must be in 1..num_local_experts=4" in err
  json.dump({**hf, "num_local_experts": 3}, open(path, "w"))
  code, err = run_cli("--from_hf", hf_dir, "--workdir", str(tmp_path / "ours"))
  assert code == 1 and "tensor model.layers.0.block_sparse_moe.experts.3.w1.weight has no place in our model" in err
  assert not os.path.exists(tmp_path / "ours")
