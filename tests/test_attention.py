"""Attention backends (config.model.attention_impl) against each other and a NumPy reference.

Every backend that runs on this CPU machine is checked with packed rows
(several documents and padding per row) and grouped-query heads: xla in
blocks that do and do not divide the row, dot_product_attention (the XLA
implementation of jax.nn.dot_product_attention), and splash in Pallas
interpret mode, alone and per shard under a 2×2×2 mesh of the 8 fake CPU
devices. cuDNN needs a GPU and splash without interpret mode a TPU: here
only their error messages are checked, and splash is compiled ahead of time
for a TPU slice through the planner (libtpu).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import configs as config_lib
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError
from polyglot_jax.models import attention as attn
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder
from polyglot_jax.plan import aot, topologies

import reference

needs_libtpu = pytest.mark.skipif(
    not topologies.libtpu_available(),
    reason="needs libtpu for ahead-of-time TPU compiles: pip install -e '.[test]' (or '.[tpu]')")

# 200 tokens: not a multiple of the xla blocks below (64, 48) nor of splash's 128 (padded to 256).
B, L, H, K, D = 2, 200, 4, 2, 16


def packed_segments(b, length):
  """Rows of several documents and a padded tail (id 0), different in each row."""
  seg = np.zeros((b, length), np.int32)
  bounds = [(0, 37, 1), (37, 120, 2), (120, 181, 3)]  # Row 0: three documents, then padding.
  for lo, hi, doc in bounds:
    seg[0, lo:hi] = doc
  seg[1:, :150] = 5  # Other rows: one long document and padding.
  seg[1:, 150:170] = 6
  return seg


@pytest.fixture(scope="module")
def qkv():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(B, L, H, D)).astype(np.float32)
  k = rng.normal(size=(B, L, K, D)).astype(np.float32)
  v = rng.normal(size=(B, L, K, D)).astype(np.float32)
  return q, k, v, packed_segments(B, L)


def numpy_attention(q, k, v, seg):
  """Causal attention within documents, float64, one head at a time (query head h reads kv head h // G)."""
  b, length, h, d = q.shape
  group = h // k.shape[2]
  allowed = (np.arange(length)[:, None] >= np.arange(length)[None, :])[None] & (seg[:, :, None] == seg[:, None, :])
  out = np.zeros(q.shape)
  for i in range(b):
    for j in range(h):
      s = q[i, :, j].astype(np.float64) @ k[i, :, j // group].astype(np.float64).T / np.sqrt(d)
      s = np.where(allowed[i], s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[i, :, j] = (p / p.sum(-1, keepdims=True)) @ v[i, :, j // group]
  return out


def forward_and_grads(fn, q, k, v, seg):
  """fn's output and the gradients of <output, w> for a fixed random w, in one jit."""
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def run(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, jnp.asarray(seg)), q, k, v)
    return out, vjp(w)

  return jax.jit(run)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))


# ---------------------------------------------------------------------------
# xla: ragged blocks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [64, 48, 8])
def test_xla_blocks_equal_the_numpy_reference(qkv, block):
  # 8 asks for 25 blocks: more than XLA_MAX_BLOCKS, so the row runs in 13 blocks of 16.
  q, k, v, seg = qkv
  out = jax.jit(attn.causal_attention, static_argnums=4)(*map(jnp.asarray, (q, k, v, seg)), block)
  np.testing.assert_allclose(np.asarray(out), numpy_attention(q, k, v, seg), atol=2e-5)


def test_xla_block_is_capped_at_max_blocks_per_row():
  assert attn.xla_block(L, 64) == 64 and attn.xla_block(L, 0) == L and attn.xla_block(L, 512) == L
  assert attn.xla_block(L, 8) == 16  # ceil(200 / 16) = 13, rounded up to 16: 13 blocks.
  assert -(-L // attn.xla_block(L, 8)) <= attn.XLA_MAX_BLOCKS
  assert attn.xla_block(4096, 64) == 256


def plain_attention(q, k, v, seg):
  """Causal attention within documents as jnp autodiff sees it: one [L, L] masked softmax, no custom VJP."""
  length, group = q.shape[1], q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
  allowed = (jnp.arange(length)[:, None] >= jnp.arange(length)[None, :])[None] & (seg[:, :, None] == seg[:, None, :])
  s = jnp.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(q.shape[-1])
  p = jax.nn.softmax(jnp.where(allowed[:, None], s, -1e30), axis=-1)
  return jnp.einsum("bhlm,bmhd->blhd", p, v)


@pytest.mark.parametrize("block", [64, 48, 0])
def test_xla_backward_equals_autodiff_of_plain_attention(qkv, block):
  # The xla backend's backward pass is written out (a custom VJP): its gradients, with packing, padding
  # and grouped-query heads, in blocks that do and do not divide the row, against autodiff.
  ours = forward_and_grads(lambda q, k, v, s: attn.causal_attention(q, k, v, s, block), *qkv)
  ref = forward_and_grads(plain_attention, *qkv)
  assert_same(ours, ref, atol=2e-5, grad_atol=2e-5)


def test_xla_scores_only_tiles_never_the_full_matrix(qkv):
  args = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in qkv]

  def text(block):
    return jax.jit(lambda q, k, v, s: attn.causal_attention(q, k, v, s, block)).lower(*args).as_text()

  full = re.compile(rf"x{L}x{L}x")  # A [..., L, L] tensor type in the StableHLO text.
  assert full.search(text(0))  # One block does build it: the check can see it.
  tiled = text(64)  # 200 tokens padded to 4 blocks of 64.
  assert not full.search(tiled)
  g = H // K
  tile = re.compile(rf"tensor<{B}x{K}x{g * 64}x64xf32>")  # One query block's G heads × one key block.
  assert len(tile.findall(tiled)) >= 10  # 4 · 5 / 2 = 10 tiles, each scored once.
  assert not re.search(rf"x{g * 64}x(128|192|256)xf32", tiled)  # No tile spans several key blocks.


# ---------------------------------------------------------------------------
# dot_product_attention and splash against xla (packing, grouped-query heads)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xla_reference(qkv):
  """xla's output and gradients, in blocks of 64 (the last of 8)."""
  return forward_and_grads(lambda q, k, v, s: attn.attend(q, k, v, s, "xla", 64), *qkv)


def assert_same(ours, ref, atol=2e-5, grad_atol=2e-4):
  (out, grads), (ref_out, ref_grads) = ours, ref
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=atol)
  for g, r, name in zip(grads, ref_grads, "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=grad_atol, err_msg=f"d{name}")


def test_dot_product_attention_equals_xla_forward_and_gradient(qkv, xla_reference):
  ours = forward_and_grads(lambda q, k, v, s: attn.attend(q, k, v, s, "dot_product_attention"), *qkv)
  assert_same(ours, xla_reference)


def test_splash_in_interpret_mode_equals_xla_forward_and_gradient(qkv, xla_reference):
  ours = forward_and_grads(lambda q, k, v, s: attn.attend(q, k, v, s, "splash", interpret=True), *qkv)
  assert_same(ours, xla_reference)


def test_splash_per_shard_under_a_mesh_equals_the_numpy_reference():
  # 4 rows over data×fsdp = 4, 4 query heads over tensor = 2, one kv head (repeated per shard).
  rng = np.random.default_rng(2)
  q, k, v = (rng.normal(size=(4, 130, h, 8)).astype(np.float32) for h in (4, 1, 1))
  seg = packed_segments(4, 130)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    assert attn._splash_sharding(4, 4, 1) == (("data", "fsdp"), ("tensor",), 4)
    with attn.pallas_interpret():
      lowered = jax.jit(lambda *a: attn.attend(*a, "splash")).lower(*map(jnp.asarray, (q, k, v, seg)))
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    out = lowered.compile()(*map(jnp.asarray, (q, k, v, seg)))
    np.testing.assert_allclose(np.asarray(out), numpy_attention(q, k, v, seg), atol=2e-5)
    # 3 rows and 3 heads: no mesh axis divides either, so every device runs the whole kernel (replicated).
    q3, k3, v3, seg3 = q[:3, :, :3], k[:3], v[:3], seg[:3]
    assert attn._splash_sharding(3, 3, 1) == (None, None, 1)
    with attn.pallas_interpret():
      lowered3 = jax.jit(lambda *a: attn.attend(*a, "splash")).lower(*map(jnp.asarray, (q3, k3, v3, seg3)))
    # Still inside shard_map: the partitioner is never handed a Pallas call to split.
    assert "shard_map" in lowered3.as_text() or "sdy.manual_computation" in lowered3.as_text()
    out3 = lowered3.compile()(*map(jnp.asarray, (q3, k3, v3, seg3)))
  np.testing.assert_allclose(np.asarray(out3), numpy_attention(q3, k3, v3, seg3), atol=2e-5)


def random_model(cfg, mesh):
  """A Decoder with random parameters, built from its abstract shape (an eager init takes seconds here)."""
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=1))))
  rng = np.random.default_rng(4)

  def fill(path, x):
    scale = jax.tree_util.keystr(path).endswith("['scale']")  # RMSNorm gains near 1, weights near 0.
    return jnp.asarray(scale + 0.2 * rng.normal(size=x.shape), x.dtype)

  pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state), jax.tree.map(np.asarray, pure)


def test_decoder_with_splash_equals_the_numpy_decoder():
  cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=0, mlp_dim=48,
                    attention_impl="splash")
  one_device = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
  model, params = random_model(cfg, one_device)
  tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 24))
  seg = packed_segments(2, 24)
  seg[0, :] = np.repeat([1, 2, 3], 8)
  pos = np.concatenate([np.arange(8)] * 3)[None].repeat(2, 0)
  with mesh_lib.activate(one_device, config_lib.DEFAULT_RULES), attn.pallas_interpret():
    logits = nnx.jit(lambda m, t, s, p: m(t, s, p))(model, *map(jnp.asarray, (tokens, seg, pos)))
  ref = reference.decoder_logits(params, cfg, tokens, seg, pos)
  real = seg != 0
  np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------
# auto, and one-line errors
# ---------------------------------------------------------------------------


def test_auto_picks_by_platform():
  f32, bf16 = jnp.float32, jnp.bfloat16
  assert attn.attention_platform() == "cpu"
  assert attn.resolve_attention_impl("auto", "cpu", 4096, bf16, 128) == "xla"
  assert attn.resolve_attention_impl("auto", "tpu", 2048, bf16, 128) == "splash"
  assert attn.resolve_attention_impl("auto", "tpu", 64, bf16, 128) == "xla"  # Shorter than one splash block.
  assert attn.resolve_attention_impl("auto", "gpu", 2048, bf16, 128) == "cudnn"
  assert attn.resolve_attention_impl("auto", "gpu", 2048, f32, 128) == "xla"  # cuDNN has no float32 flash.
  assert attn.resolve_attention_impl("splash", "cpu", 256, f32, 16, interpret=True) == "splash"


def test_unknown_backend_is_a_one_line_config_error():
  with pytest.raises(ValueError) as e:
    ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=0, mlp_dim=8,
                attention_impl="flash")
  message = str(e.value)
  assert "\n" not in message and "attention_impl='flash' is unknown" in message
  assert "'xla'" in message and "'splash'" in message and "'dot_product_attention'" in message


@pytest.mark.parametrize("impl,platform,dtype,needs", [
    ("splash", "cpu", jnp.float32, "needs a TPU"),
    ("splash", "gpu", jnp.bfloat16, "needs a TPU"),
    ("cudnn", "cpu", jnp.bfloat16, "needs an NVIDIA GPU"),
    ("cudnn", "tpu", jnp.bfloat16, "needs an NVIDIA GPU"),
    ("cudnn", "gpu", jnp.float32, "needs bfloat16 or float16"),
])
def test_backend_unavailable_on_the_platform_is_one_line(impl, platform, dtype, needs):
  with pytest.raises(ConfigError) as e:
    attn.resolve_attention_impl(impl, platform, 256, dtype, 64)
  message = str(e.value)
  assert "\n" not in message and f"attention_impl='{impl}'" in message and needs in message
  assert f"on {platform} use one of" in message and "'xla'" in message


def test_splash_traced_on_cpu_outside_interpret_mode_fails_before_running(qkv):
  with pytest.raises(ConfigError, match=r"'splash' .* cannot run on cpu: .*'xla'"):
    jax.jit(lambda *a: attn.attend(*a, "splash")).lower(*map(jnp.asarray, qkv))


# ---------------------------------------------------------------------------
# splash compiled ahead of time for a TPU slice (libtpu, no TPU)
# ---------------------------------------------------------------------------


def tiny_tpu_config(**model):
  """A 1-layer d_model=128 decoder with grouped-query heads and rows of 200 tokens (padded to 256 by splash)."""
  c = config_lib.default_config()
  c.lock()
  values = {"model.vocab_size": 256, "model.d_model": 128, "model.num_layers": 1, "model.num_heads": 4,
            "model.num_kv_heads": 2, "model.mlp_dim": 128, "model.dtype": "bfloat16", "model.scan_layers": False,
            "model.remat_policy": "none", "data.seq_len": 200, "data.global_batch_size": 8, "train.num_steps": 10}
  values.update({f"model.{k}": v for k, v in model.items()})
  for key, value in values.items():
    config_lib.set_key(c, key, value, from_string=False)
  config_lib.validate(c)
  return c


@needs_libtpu
def test_splash_train_step_compiles_for_a_tpu_slice():
  tpu = topologies.get("v5e-4")
  config = tiny_tpu_config(attention_impl="splash")
  plan = aot.plan_step(config, tpu.name, estimate_cost=False)
  assert plan.fits and plan.memory_source == "memory_analysis"
  # The same step, lowered again: the splash kernels (forward, dq, dkv) are in it, per shard.
  sizes = aot.mesh_sizes(config.mesh.to_dict(), tpu)
  setup, batch = aot.build_setup(aot.with_overrides(config, {f"mesh.{k}": v for k, v in sizes.items()}), sizes,
                                 topologies.devices(tpu.name), 1)
  with mesh_lib.activate(setup.mesh, config_lib.DEFAULT_RULES):
    assert attn.attention_platform() == "tpu"  # What auto reads under the planner's mesh: it picks splash.
  text = setup.train_step.lower(setup.abstract_state, batch).as_text()
  assert text.count("tpu_custom_call") >= 3
