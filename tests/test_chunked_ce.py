"""Chunked cross-entropy (models/chunked_ce.py) equals the plain full-logits loss, and never builds [T, V]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.models import chunked_ce
from polyglot_jax.models.chunked_ce import chunked_token_cross_entropy, chunked_weighted_ce_sum, resolve_chunk_size
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.objectives import dpo, lm
from polyglot_jax.train.trainer import build

from test_sharding import random_batch

MiB = 2**20


def _weighted_loss(token_losses_fn, weights_T, z_loss):
  """Σ w·ce + z_loss·Σ w·log_z², the lm objective's loss sum, as a function of (hidden, head)."""
  def loss(h_TxE, head_ExV):
    ce_T, log_z_T = token_losses_fn(h_TxE, head_ExV)
    return jnp.sum(ce_T * weights_T) + z_loss * jnp.sum(jnp.square(log_z_T) * weights_T)
  return loss


@pytest.mark.parametrize("chunk_size", [8, 7, 40, 64])
def test_chunked_equals_plain_values_and_gradients(chunk_size):
  # T = 40: chunks of 8 divide it, 7 pads 2 tokens, 40 is one chunk, 64 is clamped to T.
  rng = np.random.default_rng(0)
  t, e, v = 40, 16, 97
  h_TxE = jnp.asarray(rng.normal(size=(t, e)), jnp.float32)
  head_ExV = jnp.asarray(rng.normal(size=(e, v)) * 0.5, jnp.float32)
  targets_T = jnp.asarray(rng.integers(0, v, t), jnp.int32)
  weights_T = jnp.asarray(rng.random(t) * (rng.random(t) > 0.2), jnp.float32)

  def plain(h, w):
    logits = jnp.matmul(h, w, preferred_element_type=jnp.float32)
    ce, log_z = lm.token_cross_entropy(logits[None], targets_T[None])
    return ce[0], log_z[0]

  def chunked(h, w):
    return chunked_token_cross_entropy(h, w, targets_T, chunk_size=chunk_size)

  ce_ref, log_z_ref = jax.jit(plain)(h_TxE, head_ExV)
  ce, log_z = jax.jit(chunked)(h_TxE, head_ExV)
  np.testing.assert_allclose(np.asarray(ce), np.asarray(ce_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(log_z), np.asarray(log_z_ref), rtol=1e-5, atol=1e-5)

  grad = lambda f: jax.jit(jax.value_and_grad(_weighted_loss(f, weights_T, 1e-2), argnums=(0, 1)))  # noqa: E731
  value_ref, (dh_ref, dhead_ref) = grad(plain)(h_TxE, head_ExV)
  value, (dh, dhead) = grad(chunked)(h_TxE, head_ExV)
  np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(dh), np.asarray(dh_ref), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dhead), np.asarray(dhead_ref), rtol=1e-5, atol=1e-6)

  # The loss-sum form (gradients formed in the forward loop), under a non-unit outer cotangent.
  def fused(h, w):
    loss_sum, ce, log_z = chunked_weighted_ce_sum(h, w, targets_T, weights_T, z_loss=1e-2, chunk_size=chunk_size)
    return 3.0 * loss_sum, (ce, log_z)
  (value, (ce, log_z)), (dh, dhead) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(
      h_TxE, head_ExV)
  np.testing.assert_allclose(float(value), 3.0 * float(value_ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ce), np.asarray(ce_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(log_z), np.asarray(log_z_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dh), 3.0 * np.asarray(dh_ref), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dhead), 3.0 * np.asarray(dhead_ref), rtol=1e-5, atol=1e-6)
  # Outside differentiation it is the same sum.
  np.testing.assert_allclose(float(jax.jit(fused)(h_TxE, head_ExV)[0]), 3.0 * float(value_ref), rtol=1e-6)


def test_bfloat16_compute_matches_plain_bfloat16():
  # Compute-dtype inputs with float32 accumulation, as Decoder.logits does; the head gradient keeps its dtype.
  rng = np.random.default_rng(1)
  t, e, v = 24, 32, 64
  h_TxE = jnp.asarray(rng.normal(size=(t, e)), jnp.bfloat16)
  head_ExV = jnp.asarray(rng.normal(size=(e, v)) * 0.3, jnp.bfloat16)
  targets_T = jnp.asarray(rng.integers(0, v, t), jnp.int32)
  weights_T = jnp.ones((t,), jnp.float32)

  def plain(h, w):
    ce, log_z = lm.token_cross_entropy(jnp.matmul(h, w, preferred_element_type=jnp.float32)[None], targets_T[None])
    return ce[0], log_z[0]

  chunked = lambda h, w: chunked_token_cross_entropy(h, w, targets_T, chunk_size=5)  # noqa: E731
  grad = lambda f: jax.jit(jax.value_and_grad(_weighted_loss(f, weights_T, 0.0), argnums=(0, 1)))  # noqa: E731
  fused = lambda h, w: chunked_weighted_ce_sum(h, w, targets_T, weights_T, z_loss=0.0, chunk_size=5)[0]  # noqa: E731
  value_ref, (dh_ref, dhead_ref) = grad(plain)(h_TxE, head_ExV)
  for value, (dh, dhead) in (grad(chunked)(h_TxE, head_ExV),
                             jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(h_TxE, head_ExV)):
    assert dh.dtype == jnp.bfloat16 and dhead.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-6)
    # bfloat16 has 8 mantissa bits: the gradients agree to its rounding (2^-8 relative).
    np.testing.assert_allclose(np.asarray(dh, np.float32), np.asarray(dh_ref, np.float32), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dhead, np.float32), np.asarray(dhead_ref, np.float32), rtol=2e-2,
                               atol=2e-2)


def test_resolve_chunk_size():
  threshold = 256 * MiB
  # 8×64 tokens × 2048 vocab × 4 B = 4 MiB: the tiny test config stays on the plain path.
  assert resolve_chunk_size(512, 2048, -1, threshold) == 0
  # 8×512 × 32000 × 4 B = 500 MiB > 256 MiB: chunks of ≤ 64 MiB → ≤ 524 tokens; 512 divides 4096.
  assert resolve_chunk_size(4096, 32000, -1, threshold) == 512
  # 4099 is prime: no divisor near 8 chunks, so the largest chunk (padding the last).
  assert resolve_chunk_size(4099, 32000, -1, threshold) == 524
  # The same per-device tokens on 8 batch shards: 8× the chunk, each device's share unchanged.
  assert resolve_chunk_size(8 * 4096, 32000, -1, threshold, shards=8) == 8 * 512
  # 2 MiB of logits per device stays plain even though the 8 devices together exceed the threshold.
  assert resolve_chunk_size(8 * 4096, 128, -1, 4 * MiB, shards=8) == 0
  assert resolve_chunk_size(8 * 4096, 128, -1, 4 * MiB) > 0
  # An 8B-like step on 64 chips (16,384 tokens each, 256k vocabulary) with the accelerator bound:
  # 512 MiB per chip → ≤ 524 tokens per chip per chunk → 32 chunks of 512 per chip.
  assert resolve_chunk_size(64 * 16384, 256000, -1, threshold, shards=64,
                            max_bytes=chunked_ce.max_chunk_bytes("tpu")) == 64 * 512
  assert chunked_ce.max_chunk_bytes("cpu") == 64 * MiB
  assert resolve_chunk_size(4096, 32000, 0, threshold) == 0
  assert resolve_chunk_size(4096, 32000, 100, threshold) == 100
  assert resolve_chunk_size(64, 32000, 100, threshold) == 64
  with pytest.raises(ValueError, match=r"config.model.ce_chunk_size=-2; use -1 \(auto\), 0 \(off\)"):
    ModelConfig(vocab_size=8, d_model=4, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=4, mlp_dim=8,
                ce_chunk_size=-2)


def _loss_and_grads(setup, params, batch):
  with mesh_lib.activate(setup.mesh, setup.config.logical_axis_rules):
    def loss(p):
      loss_sum, weight, outputs = setup.objective.loss_sums(nnx.merge(setup.graphdef, p), batch, None)
      return loss_sum, (weight, outputs)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("model_overrides,fsdp", [
    ({}, 1),
    # An untied head, token chunks under a batch-sharded mesh, and the MoE router losses riding along.
    ({"model__tie_embeddings": False, "model__num_experts": 4, "model__moe_top_k": 2}, 2),
])
def test_lm_objective_chunked_equals_plain(make_config, model_overrides, fsdp):
  # 8 rows × 64 = 512 tokens; chunks of 48 do not divide them.
  results = {}
  for chunk in (0, 48):
    config = make_config(optimizer__z_loss=1e-2, model__ce_chunk_size=chunk, **model_overrides)
    setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": fsdp}, jax.devices()[:fsdp]))
    state = setup.init_fn()
    batch = random_batch(config)
    batch["loss_weights"][:, -5:] = 0
    batch["loss_weights"][1, :20] = 0
    results[chunk] = jax.device_get(_loss_and_grads(setup, state.params, jax.tree.map(jnp.asarray, batch)))
  (loss_ref, (weight_ref, out_ref)), grads_ref = results[0]
  (loss, (weight, out)), grads = results[48]
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  assert weight == weight_ref
  assert out.keys() == out_ref.keys()
  for key in out_ref:
    np.testing.assert_allclose(out[key], out_ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(grads_ref))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    ref = flat_ref[path]
    # Chunking reorders float32 sums: near-zero entries are compared at the scale of the whole tensor.
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=jax.tree_util.keystr(path))


def test_dpo_completion_logps_chunked_equal_plain(make_config):
  # DPO's policy log-probs go through the same path: [chosen; rejected] is 16 rows × 64 tokens, chunks of 48.
  results = {}
  for chunk in (0, 48):
    config = make_config(model__ce_chunk_size=chunk)
    setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
    params = setup.init_fn().params
    batch = {}
    for side, seed in (("chosen", 0), ("rejected", 1)):
      rows = random_batch(config, seed)
      rows["loss_weights"][:, :10] = 0  # The prompt.
      batch.update({f"{side}_{k}": jnp.asarray(v) for k, v in rows.items()})
    with mesh_lib.activate(setup.mesh, config.logical_axis_rules):
      def margin(p):
        (pi_c, pi_r), _ = dpo._pair_forward(nnx.merge(setup.graphdef, p), batch)
        return jnp.sum(pi_c - pi_r), (pi_c, pi_r)
      results[chunk] = jax.device_get(jax.jit(jax.value_and_grad(margin, has_aux=True))(params))
  (_, logps_ref), grads_ref = results[0]
  (_, logps), grads = results[48]
  for got, want in zip(logps, logps_ref):
    np.testing.assert_allclose(got, want, rtol=1e-5)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(grads_ref))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    ref = flat_ref[path]
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=jax.tree_util.keystr(path))


def test_auto_keeps_tiny_config_on_the_plain_path(make_config):
  # Auto (-1) on a 4 MiB-logits micro-batch must trace exactly the jaxpr of chunking off (0).
  jaxprs = []
  for chunk in (-1, 0):
    config = make_config(model__ce_chunk_size=chunk)
    setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
    params = setup.init_fn().params
    batch = jax.tree.map(jnp.asarray, random_batch(config))
    with mesh_lib.activate(setup.mesh, config.logical_axis_rules):
      fn = lambda p, b: setup.objective.loss_sums(nnx.merge(setup.graphdef, p), b, None)[0]  # noqa: E731
      jaxprs.append(str(jax.make_jaxpr(fn)(params, batch)))
  assert jaxprs[0] == jaxprs[1]
  # Neither chunked cross-entropy's custom VJP is there (attention has its own, which stays).
  assert "name=_loss_sum" not in jaxprs[0] and "name=_fused_ce" not in jaxprs[0]


def test_compiled_memory_has_no_full_logits_buffer():
  t, e, v, chunk = 4096, 64, 8000, 128
  full_logits_bytes = t * v * 4  # 125 MiB
  args = (jax.ShapeDtypeStruct((t, e), jnp.float32), jax.ShapeDtypeStruct((e, v), jnp.float32),
          jax.ShapeDtypeStruct((t,), jnp.int32))

  def plain(h, w, targets):
    ce, log_z = lm.token_cross_entropy(jnp.matmul(h, w, preferred_element_type=jnp.float32)[None], targets[None])
    return ce[0], log_z[0]

  def chunked(h, w, targets):
    return chunked_token_cross_entropy(h, w, targets, chunk_size=chunk)

  def compiled(f):
    def loss(h, w, targets):
      ce, log_z = f(h, w, targets)
      return jnp.sum(ce) + 1e-4 * jnp.sum(jnp.square(log_z))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()

  plain_c, chunked_c = compiled(plain), compiled(chunked)
  # The check can see a [T, V] buffer: the plain loss+grad holds at least one.
  assert plain_c.memory_analysis().temp_size_in_bytes >= full_logits_bytes
  assert f"f32[{t},{v}]" in plain_c.as_text()
  # Chunked: a few [chunk, V] buffers (3.9 MiB each here), the float32 head-gradient accumulator [E, V]
  # (2 MiB) and [T, E] arrays (1 MiB each).
  assert chunked_c.memory_analysis().temp_size_in_bytes < full_logits_bytes / 4
  assert f"f32[{t},{v}]" not in chunked_c.as_text()

  def fused(h, w, targets):
    return chunked_weighted_ce_sum(h, w, targets, jnp.ones_like(targets, jnp.float32), z_loss=1e-4,
                                   chunk_size=chunk)[0]
  fused_c = jax.jit(jax.value_and_grad(fused, argnums=(0, 1))).lower(*args).compile()
  assert fused_c.memory_analysis().temp_size_in_bytes < full_logits_bytes / 4
  assert f"f32[{t},{v}]" not in fused_c.as_text()


@pytest.mark.parametrize("per_token", [False, True])
def test_chunk_loop_has_no_collective_under_fsdp(per_token):
  # 8 chunks of 128 tokens over fsdp=8, head sharded on its embed dim as a parameter: the head is gathered
  # once and the per-device head-gradient accumulators summed once, so no collective runs per chunk.
  from jax.sharding import NamedSharding, PartitionSpec as P
  from polyglot_jax import configs as config_lib
  from polyglot_jax.plan import hlo
  mesh = mesh_lib.make_mesh({"fsdp": 8})
  t, e, v, chunk = 1024, 16, 96, 128
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    args = (jax.ShapeDtypeStruct((t, e), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None))),
            jax.ShapeDtypeStruct((e, v), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None))),
            jax.ShapeDtypeStruct((t,), jnp.int32, sharding=NamedSharding(mesh, P("fsdp"))))

    def loss(h, w, targets):
      if per_token:  # DPO/score's path: per-token values, logits recomputed backward.
        return jnp.sum(chunked_token_cross_entropy(h, w, targets, chunk_size=chunk)[0])
      return chunked_weighted_ce_sum(h, w, targets, jnp.ones((t,), jnp.float32), z_loss=1e-4, chunk_size=chunk)[0]
    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
  counts = hlo.collectives(text)
  total = sum(counts[kind]["count"] for kind in hlo.KINDS)
  assert 0 < total <= 4, counts  # A few, outside the loops (8 per loop if the body held one).
