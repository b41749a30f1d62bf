"""Decoder numerics against a NumPy reference, packing, attention blocks, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder

import reference


def one_device():
  return mesh_lib.activate(mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]), config_lib.DEFAULT_RULES)


def make_model(**kw):
  base = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=0, mlp_dim=48,
              rope_theta=10000.0, init_std=0.1, attention_block=0)
  base.update(kw)
  cfg = ModelConfig(**base)
  with one_device():
    model = Decoder(cfg, nnx.Rngs(params=1))
    if cfg.qkv_bias:  # Random biases so that the test sees them.
      state = nnx.state(model, nnx.Param)
      pure = nnx.to_pure_dict(state)
      key = jax.random.key(3)
      def fill(path, x):
        name = str(path[-1].key)
        return jax.random.normal(jax.random.fold_in(key, len(path)), x.shape) * 0.1 if name.endswith("bias") else x
      pure = jax.tree_util.tree_map_with_path(fill, pure)
      nnx.replace_by_pure_dict(state, pure)
      nnx.update(model, state)
  return cfg, model


def params_np(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("kw", [
    dict(scan_layers=True, tie_embeddings=True),
    dict(scan_layers=False, tie_embeddings=False),
    dict(scan_layers=True, tie_embeddings=False, qkv_bias=True, num_kv_heads=1),
    dict(scan_layers=False, tie_embeddings=True, num_kv_heads=4, rope_theta=1e6),
])
def test_logits_match_numpy_reference(kw):
  cfg, model = make_model(**kw)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11))
  with one_device():
    ours = np.asarray(model(jnp.asarray(tokens)))
  ref = reference.decoder_logits(params_np(model), cfg, tokens)
  np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


def test_packed_sequences_equal_unpacked():
  cfg, model = make_model(attention_block=4)
  rng = np.random.default_rng(1)
  a, b = rng.integers(4, cfg.vocab_size, 5), rng.integers(4, cfg.vocab_size, 7)
  length = 16
  tokens = np.zeros((1, length), np.int32)
  seg = np.zeros((1, length), np.int32)
  pos = np.zeros((1, length), np.int32)
  tokens[0, :5], seg[0, :5], pos[0, :5] = a, 1, np.arange(5)
  tokens[0, 5:12], seg[0, 5:12], pos[0, 5:12] = b, 2, np.arange(7)
  with one_device():
    packed = np.asarray(model(jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(pos)))
    alone_a = np.asarray(model(jnp.asarray(a[None])))
    alone_b = np.asarray(model(jnp.asarray(b[None])))
  np.testing.assert_allclose(packed[0, :5], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:12], alone_b[0], atol=1e-5)


def test_block_causal_attention_equals_one_block():
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 16)))
  seg = jnp.asarray(np.repeat([[1] * 6 + [2] * 10], 2, 0))
  _, full = make_model(attention_block=0)
  _, blocked = make_model(attention_block=4)
  with one_device():
    np.testing.assert_allclose(np.asarray(full(tokens, seg)), np.asarray(blocked(tokens, seg)), atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_give_the_same_gradients(scan):
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 8)))
  grads = {}
  for policy in ("none", "dots", "full"):
    _, model = make_model(remat_policy=policy, scan_layers=scan)
    with one_device():
      g = nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(model)
    grads[policy] = jax.tree.map(np.asarray, nnx.to_pure_dict(g))
  for policy in ("dots", "full"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads["none"], grads[policy])


def test_scan_and_unrolled_agree():
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 97, (1, 9)))
  cfg_s, scanned = make_model(scan_layers=True)
  _, unrolled = make_model(scan_layers=False)
  ps = params_np(scanned)
  pu = params_np(unrolled)
  # Copy the scanned (stacked) weights into the unrolled model, layer by layer.
  for i in range(cfg_s.num_layers):
    pu["blocks"][i] = jax.tree.map(lambda a: a[i], ps["blocks"])
  for k in ("embedding", "final_norm"):
    pu[k] = ps[k]
  with one_device():
    state = nnx.state(unrolled, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pu))
    nnx.update(unrolled, state)
    np.testing.assert_allclose(np.asarray(scanned(tokens)), np.asarray(unrolled(tokens)), atol=1e-5)


def test_bad_model_config_is_a_clear_error():
  with pytest.raises(ValueError, match="num_heads=6 is not a multiple of config.model.num_kv_heads=4"):
    ModelConfig(vocab_size=8, d_model=24, num_layers=1, num_heads=6, num_kv_heads=4, head_dim=0, mlp_dim=8)


def test_bfloat16_compute_keeps_float32_parameters():
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (2, 8)))
  _, f32 = make_model()
  _, bf16 = make_model(dtype="bfloat16")
  with one_device():
    a = np.asarray(f32(tokens))
    b = bf16(tokens)
  assert b.dtype == jnp.float32  # Logits come out in float32 for the loss.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  np.testing.assert_allclose(np.asarray(b), a, atol=0.05)
  assert not np.array_equal(np.asarray(b), a)  # It really computed in bfloat16.


def test_flops_formula_matches_the_compiler_count():
  """Forward FLOPs per token from the formula vs XLA's own count of the compiled forward."""
  from polyglot_jax.models.flops import forward_flops_per_token
  cfg, model = make_model(vocab_size=512, d_model=64, mlp_dim=128, attention_block=0, scan_layers=False)
  tokens = jnp.zeros((2, 32), jnp.int32)
  with one_device():
    graphdef, params = nnx.split(model)
    compiled = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)).lower(params, tokens).compile()
  xla_flops = compiled.cost_analysis()["flops"]
  ours = forward_flops_per_token(cfg, 32) * tokens.size
  # XLA also counts elementwise work (norms, softmax, RoPE); matmuls dominate.
  assert abs(ours - xla_flops) < 0.05 * xla_flops, (ours, xla_flops)


def test_moe_flops_count_the_active_experts_only():
  from polyglot_jax.models.flops import matmul_params
  dims = dict(vocab_size=100, d_model=16, num_layers=4, num_heads=2, num_kv_heads=2, head_dim=0, mlp_dim=24,
              scan_layers=False)
  dense = matmul_params(ModelConfig(**dims))
  ffn = 3 * 16 * 24
  # 8 experts top-2 plus one shared expert on layers 1 and 3: each of those runs 3 FFNs and the router.
  moe = ModelConfig(**dims, num_experts=8, moe_top_k=2, moe_shared_experts=1, moe_layers="every:2")
  assert matmul_params(moe) == dense + 2 * (16 * 8 + 2 * ffn)
  # Stored expert weights beyond the active ones are not counted.
  assert matmul_params(ModelConfig(**dims, num_experts=64, moe_top_k=1)) == dense + 4 * 16 * 64
