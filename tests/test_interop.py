"""polyglot-jax convert: logits parity with transformers both ways, bit-exact round trips,
config.init_from, and a one-line error for each bad input.

Tiny random models are built with transformers on CPU torch; nothing is downloaded.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import cli
from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.interop import ConvertError, export_hf, import_hf, load_params
from polyglot_jax.interop import workdir as workdir_lib
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

# Max abs logit difference, float32 on both sides (logits up to ~2 in magnitude). Measured
# over every parity case here: 5.4e-7 .. 7.8e-7 (docs/interop.md); README.md quotes this bound.
TOL = 2e-6
VOCAB, D, LAYERS, HEADS, KV_HEADS, MLP = 256, 64, 2, 4, 2, 128
# Each family exercises something the others do not: rope_theta, q/k/v biases, head_dim ≠ d/heads.
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_theta=500000.0, rms_norm_eps=1e-5)),
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6)),
    "mistral": ("MistralConfig", dict(head_dim=24)),
}


def one_device():
  return mesh_lib.activate(mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]), config_lib.DEFAULT_RULES)


def make_hf_model(family, tied, seed=0, **overrides):
  """A random transformers model; norms and biases randomised too, so that a missed one shows."""
  cls_name, extra = FAMILIES[family]
  kw = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=MLP, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=tied, **extra)
  kw.update(overrides)
  config = getattr(transformers, cls_name)(**kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_((0.1 if name.endswith("bias") else 0.05) * torch.randn_like(p))
  return model


def save_hf(model, path, **kw):
  model.save_pretrained(str(path), safe_serialization=True, **kw)
  return str(path)


def torch_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def our_logits(model_cfg: ModelConfig, params, tokens):
  with one_device():
    abstract = nnx.eval_shape(lambda: Decoder(model_cfg, nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return np.asarray(nnx.merge(graphdef, state)(jnp.asarray(tokens)))


def abstract_params(model_cfg: ModelConfig):
  with one_device():
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(model_cfg, nnx.Rngs(params=0))), nnx.Param))


def config_of(workdir):
  return workdir_lib.read_config(workdir)


def tokens_for(vocab=VOCAB, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, (2, 16))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_cli(*args):
  """(exit code, stderr) of ``polyglot-jax convert ARGS`` in-process."""
  import contextlib
  import io
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main(["convert", *args])
  return code, err.getvalue()


# ---------------------------------------------------------------------------
# Hugging Face → ours
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """(family, tied) → (saved HF directory, the torch model)."""
  out = {}
  for family in FAMILIES:
    for tied in (True, False):
      model = make_hf_model(family, tied)
      out[family, tied] = save_hf(model, tmp_path_factory.mktemp(f"{family}_{tied}")), model
  return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hf_to_ours_logits_match_transformers(hf_dirs, family, tied, tmp_path, capsys):
  hf_dir, model = hf_dirs[family, tied]
  workdir = str(tmp_path / "ours")
  assert cli.main(["convert", "--from_hf", hf_dir, "--workdir", workdir]) == 0
  out = capsys.readouterr().out
  assert "read shard 1/1 model.safetensors" in out and "--config.init_from=" in out
  config = config_of(workdir)
  assert config.model.tie_embeddings == tied and config.model.qkv_bias == (family == "qwen2")
  assert config.model.num_kv_heads == KV_HEADS < config.model.num_heads
  params = load_params(workdir, config)
  tokens = tokens_for()
  diff = np.abs(our_logits(ModelConfig.from_config(config.model), params, tokens) - torch_logits(model, tokens))
  print(f"{family} tied={tied}: max abs logit diff {diff.max():.2e}")
  assert diff.max() < TOL


def test_params_have_the_decoder_tree_for_both_layer_layouts(hf_dirs, tmp_path):
  hf_dir, _ = hf_dirs["qwen2", False]
  workdir = str(tmp_path / "ours")
  import_hf(hf_dir, workdir, progress=lambda _: None)
  config = config_of(workdir)
  stacked = load_params(workdir, config)
  config.model.scan_layers = False
  per_layer = load_params(hf_dir, config)  # Straight from the HF directory this time.
  for params, scan in ((stacked, True), (per_layer, False)):
    cfg = ModelConfig.from_config({**config.model.to_dict(), "scan_layers": scan})
    want = abstract_params(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(want)
    assert [x.shape for x in jax.tree.leaves(params)] == [x.shape for x in jax.tree.leaves(want)]
  np.testing.assert_array_equal(per_layer["blocks"][1]["attn"]["k_bias"], stacked["blocks"]["attn"]["k_bias"][1])


# ---------------------------------------------------------------------------
# Ours → Hugging Face, and round trips
# ---------------------------------------------------------------------------


def random_params(model_cfg: ModelConfig, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = str(path[-1].key)
    if name == "scale":
      return (1.0 + 0.1 * rng.standard_normal(x.shape)).astype(dtype)
    return ((0.1 if name.endswith("bias") else 0.05) * rng.standard_normal(x.shape)).astype(dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract_params(model_cfg))


def write_our_workdir(path, model_fields, params):
  """A workdir of ours as convert writes it: config.json + params/."""
  config = config_lib.default_config()
  config.lock()
  for key, value in model_fields.items():
    config_lib.set_key(config, f"model.{key}", value, from_string=False)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  workdir_lib.write_params(path, params)
  return config


OURS = {  # Architecture → our config.model (and the export's dtype).
    "llama": dict(tie_embeddings=False, scan_layers=False, rope_theta=5e5),
    "qwen2": dict(tie_embeddings=True, qkv_bias=True),
    "mistral": dict(tie_embeddings=False, head_dim=24, param_dtype="bfloat16"),
}


@pytest.mark.parametrize("arch", sorted(OURS))
def test_ours_to_hf_logits_match_and_round_trip_is_exact(arch, tmp_path):
  fields = dict(vocab_size=VOCAB, d_model=D, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS,
                head_dim=0, mlp_dim=MLP, norm_eps=1e-6)
  fields.update(OURS[arch])
  model_cfg = ModelConfig(**fields)
  dtype = np.dtype(jnp.dtype(model_cfg.param_dtype))
  params = random_params(model_cfg, dtype=dtype)
  ours = str(tmp_path / "ours")
  write_our_workdir(ours, fields, params)
  hf_dir = str(tmp_path / "hf")
  # A small shard limit: the llama export is sharded with an index, as large models are.
  shard_gb = "0.00005" if arch == "llama" else "5"
  assert cli.main(["convert", "--to_hf", "--workdir", ours, "--out", hf_dir, "--architecture", arch,
                   "--max_shard_gb", shard_gb]) == 0
  files = sorted(os.listdir(hf_dir))
  if arch == "llama":
    assert "model.safetensors.index.json" in files and "model-00002-of-" in " ".join(files)
  hf_config = json.load(open(os.path.join(hf_dir, "config.json")))
  assert hf_config["model_type"] == arch and hf_config["dtype"] == str(dtype)

  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  tokens = tokens_for()
  f32 = jax.tree.map(lambda x: x.astype(np.float32), params)
  f32_cfg = ModelConfig(**{**fields, "param_dtype": "float32"})
  diff = np.abs(our_logits(f32_cfg, f32, tokens) - torch_logits(model, tokens))
  print(f"ours → {arch}: max abs logit diff {diff.max():.2e}")
  assert diff.max() < TOL

  back = str(tmp_path / "back")
  import_hf(hf_dir, back, dtype=str(dtype), progress=lambda _: None)
  assert_trees_equal(workdir_lib.read_params(back)[0], workdir_lib.stack(params))


# ---------------------------------------------------------------------------
# config.init_from: a training run starts from the imported parameters
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_training_starts_from_converted_checkpoint_and_exports_back(demo_data, tmp_path, capsys):
  from conftest import tiny_config
  from polyglot_jax.train.trainer import train_and_evaluate
  # The tiny training config's model, as a Llama with the demo tokenizer beside it.
  hf_model = make_hf_model("llama", True, hidden_size=32, intermediate_size=64, vocab_size=2048,
                           rope_theta=10000.0, rms_norm_eps=1e-6, head_dim=8)
  hf_dir = save_hf(hf_model, tmp_path / "hf")
  shutil.copyfile(demo_data["tokenizer"], os.path.join(hf_dir, "tokenizer.model"))
  converted = str(tmp_path / "converted")
  import_hf(hf_dir, converted, progress=lambda _: None)
  spm_path = os.path.join(converted, "tokenizer", "tokenizer.model")
  assert config_of(converted).data.tokenizer == spm_path

  # Learning rate 0: the one step leaves the parameters where init_from put them, bit for bit.
  config = tiny_config(demo_data, init_from=converted, data__tokenizer=spm_path, data__eval_files=(),
                       train__num_steps=1, optimizer__learning_rate=0.0, checkpoint__every_steps=0)
  run = str(tmp_path / "run")
  summary = train_and_evaluate(config, run)
  assert f"initialised parameters from {converted}" in capsys.readouterr().out
  imported = load_params(converted, config)
  assert_trees_equal(jax.device_get(summary["state"].params), imported)
  assert_trees_equal(load_params(hf_dir, config), imported)

  # The training run's checkpoint goes back to HF, with the tokenizer it started from.
  out = str(tmp_path / "exported")
  info = export_hf(run, out, progress=lambda _: None)
  assert info["architecture"] == "llama" and "tokenizer.model" in info["tokenizer"]
  assert info["source"].endswith(os.path.join("checkpoints", "1", "state"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens = tokens_for(2048)
  np.testing.assert_allclose(torch_logits(reloaded, tokens), torch_logits(hf_model, tokens), rtol=0, atol=TOL)


# ---------------------------------------------------------------------------
# Bad inputs: one line each, naming the thing; nothing is written
# ---------------------------------------------------------------------------


def _edit_config(**changes):
  def edit(d):
    path = os.path.join(d, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))
  return edit


def _replace_tensor(name, fn):
  def edit(d):
    from safetensors.numpy import load_file, save_file
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    tensors[name] = fn(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})
  return edit


def _drop_tensor(d, name):
  from safetensors.numpy import load_file, save_file
  path = os.path.join(d, "model.safetensors")
  tensors = load_file(path)
  del tensors[name]
  save_file(tensors, path, metadata={"format": "pt"})


def _pickle_only(d):
  os.remove(os.path.join(d, "model.safetensors"))
  open(os.path.join(d, "pytorch_model.bin"), "wb").write(b"not loaded")


def _big_tokenizer(d):
  vocab = {f"t{i}": i for i in range(300)}
  json.dump({"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}, "added_tokens": []},
            open(os.path.join(d, "tokenizer.json"), "w"))


BAD_IMPORTS = {
    "architecture": (_edit_config(architectures=["GemmaForCausalLM"]),
                     "architecture ['GemmaForCausalLM'] is not supported; supported: LlamaForCausalLM, "
                     "MistralForCausalLM, Qwen2ForCausalLM"),
    "rope_scaling": (_edit_config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
                     "rope_parameters.rope_type='llama3' (RoPE scaling) is not supported"),
    "o_proj_bias": (_edit_config(attention_bias=True), "attention_bias=true puts a bias on o_proj"),
    "activation": (_edit_config(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    "shape": (_edit_config(num_key_value_heads=4),
              "tensor model.layers.0.self_attn.k_proj.weight has shape [32, 64], want [64, 64]"),
    "dtype": (_replace_tensor("model.layers.1.mlp.up_proj.weight", lambda x: x.astype(np.int8)),
              "tensor model.layers.1.mlp.up_proj.weight has dtype I8; only float tensors convert"),
    "missing_tensor": (lambda d: _drop_tensor(d, "model.layers.0.post_attention_layernorm.weight"),
                       "tensor model.layers.0.post_attention_layernorm.weight is missing"),
    "pickle": (_pickle_only, "holds only pickle checkpoints (pytorch_model.bin), which we never load"),
    "tokenizer": (_big_tokenizer, "tokenizer.json has 300 tokens but the embedding has 256 rows"),
    "float16_overflow": (_replace_tensor("model.norm.weight", lambda x: x * 1e5),
                         "tensor model.norm.weight has non-finite values in float16"),
}
EXTRA_ARGS = {"float16_overflow": ["--dtype", "float16"]}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_import_is_one_line_naming_the_thing(hf_dirs, case, tmp_path):
  edit, message = BAD_IMPORTS[case]
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(hf_dirs["llama", True][0], hf_dir)
  edit(hf_dir)
  out = str(tmp_path / "ours")
  code, err = run_cli("--from_hf", hf_dir, "--workdir", out, *EXTRA_ARGS.get(case, []))
  lines = err.strip().splitlines()
  assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
  assert message in lines[0]
  assert not os.path.exists(out)


def test_missing_shard_is_named(tmp_path):
  model = make_hf_model("mistral", False)
  hf_dir = save_hf(model, tmp_path / "hf", max_shard_size="40KB")
  shards = sorted(name for name in os.listdir(hf_dir) if name.startswith("model-"))
  assert len(shards) > 2
  os.remove(os.path.join(hf_dir, shards[1]))
  code, err = run_cli("--from_hf", hf_dir, "--workdir", str(tmp_path / "ours"))
  assert code == 1
  assert f"are missing from {hf_dir}: {shards[1]}; download them too" in err
  # The sharded original, complete, reads the same as transformers does.
  shutil.rmtree(hf_dir)
  save_hf(model, hf_dir, max_shard_size="40KB")
  import_hf(hf_dir, str(tmp_path / "ours"), progress=lambda _: None)
  config = config_of(str(tmp_path / "ours"))
  tokens = tokens_for()
  diff = our_logits(ModelConfig.from_config(config.model), load_params(str(tmp_path / "ours"), config), tokens)
  np.testing.assert_allclose(diff, torch_logits(model, tokens), rtol=0, atol=TOL)


def test_init_from_checks_the_model_and_the_window(hf_dirs, tmp_path):
  hf_dir, _ = hf_dirs["mistral", True]
  config = config_lib.default_config()
  config.lock()
  with pytest.raises(ConvertError, match="config.model.vocab_size=32000 but .*config.json has vocab_size=256"):
    load_params(hf_dir, config)
  workdir = str(tmp_path / "ours")
  import_hf(hf_dir, workdir, progress=lambda _: None)
  config = config_of(workdir)
  config.model.num_kv_heads = 4
  with pytest.raises(ConvertError, match=r"config.model.num_kv_heads=4 but .*ours/config.json has "
                                         r"model.num_kv_heads=2; set --config.model.num_kv_heads=2"):
    load_params(workdir, config)
  config.model.num_kv_heads = 2
  config.data.seq_len = 8192  # Mistral's sliding_window is 4096: longer rows would compute otherwise.
  with pytest.raises(ConvertError, match="has sliding_window=4096 but config.data.seq_len=8192"):
    load_params(workdir, config)
  with pytest.raises(ConvertError, match="neither a Hugging Face model directory"):
    load_params(str(tmp_path), config)


def test_bad_exports_are_refused(hf_dirs, tmp_path):
  workdir = str(tmp_path / "ours")
  import_hf(hf_dirs["qwen2", True][0], workdir, progress=lambda _: None)
  code, err = run_cli("--to_hf", "--workdir", workdir, "--out", str(tmp_path / "hf"), "--architecture", "mistral")
  assert code == 1 and "--architecture mistral has no q/k/v biases but config.model.qkv_bias=True" in err
  code, err = run_cli("--to_hf", "--workdir", workdir, "--out", str(tmp_path / "hf"), "--step", "7")
  assert code == 1 and "checkpoints has no step 7; steps there: none" in err
  assert not os.path.exists(tmp_path / "hf")
  code, err = run_cli("--from_hf", hf_dirs["qwen2", True][0], "--workdir", workdir)
  assert code == 1 and "is not empty; give a new directory" in err
  with pytest.raises(SystemExit):  # argparse: not a dtype we store.
    run_cli("--from_hf", hf_dirs["qwen2", True][0], "--workdir", str(tmp_path / "x"), "--dtype", "int8")


def test_training_in_a_converted_workdir_is_refused(tmp_path):
  from polyglot_jax.train.checkpoint import CheckpointError
  from polyglot_jax.train.trainer import train_and_evaluate
  from polyglot_jax import configs as config_lib
  (tmp_path / "params").mkdir()
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="--config.init_from="):
    train_and_evaluate(config_lib.default_config(), str(tmp_path))
  assert (tmp_path / "config.json").read_text() == "{}"
