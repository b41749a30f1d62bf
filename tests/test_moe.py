"""Mixture-of-experts layer: routing and losses against NumPy, dispatch modes, expert parallelism, decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import configs as config_lib
from polyglot_jax import decode
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.models import moe as moe_lib
from polyglot_jax.models.config import ModelConfig
from polyglot_jax.models.decoder import Decoder
from polyglot_jax.models.mlp import SwiGLU

BASE = dict(vocab_size=97, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=0, mlp_dim=24,
            init_std=0.3, attention_block=0, num_experts=4, moe_top_k=2)


def one_device():
  return mesh_lib.activate(mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]), config_lib.DEFAULT_RULES)


def make_cfg(**kw):
  return ModelConfig(**{**BASE, **kw})


def make_moe(**kw):
  with one_device():
    return moe_lib.MoE(make_cfg(**kw), nnx.Rngs(params=0))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_route(logits, k):
  probs = np_softmax(logits.astype(np.float64))
  idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  top = np.take_along_axis(probs, idx, -1)
  return idx, top / top.sum(-1, keepdims=True), probs


def np_swiglu(x, gate, up, down):
  g = x @ gate
  return (g / (1 + np.exp(-g)) * (x @ up)) @ down


def np_experts(m):
  return [np.asarray(m.gate_proj[...], np.float64), np.asarray(m.up_proj[...], np.float64),
          np.asarray(m.down_proj[...], np.float64)]


def random_x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------- routing and losses


@pytest.mark.parametrize("with_mask", [False, True])
def test_route_and_losses_match_numpy_formulas(with_mask):
  rng = np.random.default_rng(1)
  t, n, k = 37, 6, 2
  logits = rng.normal(size=(t, n)).astype(np.float32) * 2
  mask = rng.random(t) < 0.7 if with_mask else np.ones(t, bool)
  idx, w, probs = moe_lib.route(jnp.asarray(logits), k)
  ref_idx, ref_w, ref_probs = np_route(logits, k)
  assert idx.dtype == jnp.int32 and w.dtype == jnp.float32 and probs.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(probs), ref_probs, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)

  # N·Σ f_i·P_i: f_i = share of the (token, slot) assignments on expert i, P_i = mean probability.
  valid = np.flatnonzero(mask)
  f = np.bincount(ref_idx[valid].ravel(), minlength=n) / (len(valid) * k)
  p = ref_probs[valid].mean(0)
  ref_balance = n * np.sum(f * p)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  ref_z = np.mean(lse[valid] ** 2)
  kw = {"mask": jnp.asarray(mask)} if with_mask else {}
  np.testing.assert_allclose(float(moe_lib.load_balance_loss(jnp.asarray(logits), k, **kw)), ref_balance, rtol=1e-5)
  np.testing.assert_allclose(float(moe_lib.router_z_loss(jnp.asarray(logits), **kw)), ref_z, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(moe_lib.expert_load(idx, n, kw.get("mask"))), f, rtol=1e-6)


def test_balance_loss_is_one_when_perfectly_balanced():
  logits = jnp.zeros((8, 4), jnp.float32).at[jnp.arange(8), jnp.arange(8) % 4].set(5.0)
  # f_i = 1/4 and P_i equal for every expert: N · Σ (1/4 · 1/4) = 1.
  np.testing.assert_allclose(float(moe_lib.load_balance_loss(logits, 1)), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_one_expert_top1_equals_the_dense_swiglu(dispatch):
  cfg = make_cfg(num_experts=1, moe_top_k=1, moe_dispatch=dispatch, moe_capacity_factor=1.0)
  with one_device():
    dense = SwiGLU(cfg, nnx.Rngs(params=3))
    layer = moe_lib.MoE(cfg, nnx.Rngs(params=4))
  layer.gate_proj[...] = dense.gate_proj[...][None]
  layer.up_proj[...] = dense.up_proj[...][None]
  layer.down_proj[...] = dense.down_proj[...][None]
  x = random_x((2, 5, cfg.d_model))
  out, aux = layer(x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(dense(x)), atol=1e-6, rtol=1e-5)
  assert float(aux["dropped_fraction"]) == 0.0
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), [1.0])


def test_dropless_matches_explicit_top_k_reference_and_drops_nothing():
  layer = make_moe(moe_dispatch="dropless", moe_shared_experts=1)
  x = random_x((3, 7, 16), seed=2)
  out, aux = layer(x)
  x_np = np.asarray(x, np.float64).reshape(-1, 16)
  logits = x_np @ np.asarray(layer.router[...], np.float64)
  np.testing.assert_allclose(np.asarray(aux["router_logits"]), logits, atol=1e-5)
  idx, w, _ = np_route(logits, 2)
  np.testing.assert_allclose(w.sum(-1), 1.0)  # Each token's combine weights sum to 1.
  gate, up, down = np_experts(layer)
  shared = [np.asarray(p[...], np.float64) for p in (layer.shared.gate_proj, layer.shared.up_proj, layer.shared.down_proj)]
  ref = np.stack([sum(w[t, j] * np_swiglu(x_np[t], gate[e], up[e], down[e]) for j, e in enumerate(idx[t]))
                  + np_swiglu(x_np[t], *shared) for t in range(len(x_np))])
  np.testing.assert_allclose(np.asarray(out).reshape(-1, 16), ref, atol=1e-5, rtol=1e-4)
  assert float(aux["dropped_fraction"]) == 0.0
  np.testing.assert_allclose(np.asarray(aux["expert_load"]), np.bincount(idx.ravel(), minlength=4) / idx.size, rtol=1e-6)


def test_dropless_with_identical_experts_equals_one_dense_expert():
  """Renormalised top-k weights sum to 1, so copies of one FFN give that FFN back (the upcycling identity)."""
  layer = make_moe(moe_dispatch="dropless", num_experts=5, moe_top_k=3)
  for p in (layer.gate_proj, layer.up_proj, layer.down_proj):
    p[...] = jnp.broadcast_to(p[...][:1], p[...].shape)
  x = random_x((2, 9, 16), seed=5)
  gate, up, down = np_experts(layer)
  ref = np_swiglu(np.asarray(x, np.float64), gate[0], up[0], down[0])
  np.testing.assert_allclose(np.asarray(layer(x)[0]), ref, atol=1e-5, rtol=1e-4)


def test_dropless_gradients_equal_capacity_dispatch_without_drops():
  """Dropless (custom VJPs: the CPU piece loop, gather-only row moves) vs capacity autodiff, nothing dropped."""
  layer = make_moe(moe_dispatch="dropless")
  graphdef, state = nnx.split(layer)
  x, probe = random_x((3, 24, 16), seed=8), random_x((3, 24, 16), seed=9)

  def loss(st, x, dispatch):
    m = nnx.merge(graphdef, st)
    m.dispatch, m.capacity_factor = dispatch, float(m.num_experts)  # Capacity T·k: nothing is dropped.
    return jnp.sum(m(x)[0] * probe)

  grads = [jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(state, x, d) for d in ("dropless", "capacity")]
  for got, want in zip(*(jax.tree.leaves(g) for g in grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)


def np_capacity_reference(layer, x_np, k, n, cap, mask):
  """Slot-major buffer filling: all first choices claim rows before any second choice."""
  logits = x_np @ np.asarray(layer.router[...], np.float64)
  idx, w, _ = np_route(logits, k)
  gate, up, down = np_experts(layer)
  fill = np.zeros(n, int)
  out = np.zeros_like(x_np)
  kept = 0
  for j in range(k):
    for t in range(len(x_np)):
      if not mask[t]:
        continue
      e = idx[t, j]
      if fill[e] < cap:
        fill[e] += 1
        kept += 1
        out[t] += w[t, j] * np_swiglu(x_np[t], gate[e], up[e], down[e])
  return out, 1 - kept / (mask.sum() * k)


@pytest.mark.parametrize("with_mask", [False, True])
def test_capacity_drops_overflow_and_reports_the_dropped_fraction(with_mask):
  layer = make_moe(moe_dispatch="capacity", moe_capacity_factor=0.5)
  b, length, k, n = 2, 12, 2, 4
  x = random_x((b, length, 16), seed=7)
  mask = np.ones((b, length), bool)
  if with_mask:
    mask[:, -4:] = False  # Padding takes no buffer rows.
  out, aux = layer(x, jnp.asarray(mask) if with_mask else None)
  cap = moe_lib.expert_capacity(b * length, k, n, 0.5)
  assert cap == 6
  ref, dropped = np_capacity_reference(layer, np.asarray(x, np.float64).reshape(-1, 16), k, n, cap, mask.ravel())
  assert dropped > 0.1
  np.testing.assert_allclose(float(aux["dropped_fraction"]), dropped, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out).reshape(-1, 16), ref, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- expert parallelism


@pytest.mark.parametrize("axes, dispatch", [
    ({"expert": 2, "fsdp": 4}, "dropless"), ({"expert": 2, "fsdp": 4}, "capacity"),
    ({"expert": 4, "fsdp": 2}, "dropless"), ({"expert": 4, "fsdp": 2}, "capacity"),
    ({"expert": 4, "tensor": 2}, "dropless"),  # Tensor parallelism inside each expert.
], ids=["e2f4-dropless", "e2f4-capacity", "e4f2-dropless", "e4f2-capacity", "e4t2-dropless"])
def test_expert_sharded_equals_unsharded_forward_and_gradients(axes, dispatch):
  layer = make_moe(moe_dispatch=dispatch, moe_capacity_factor=1.0, moe_shared_experts=1)
  graphdef, state = nnx.split(layer)
  x = random_x((8, 6, 16), seed=11)

  def loss(st, x):
    out, aux = nnx.merge(graphdef, st)(x)
    return jnp.sum(out * out) + moe_lib.load_balance_loss(aux["router_logits"], 2), (out, aux["dropped_fraction"])

  step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  with one_device():
    (ref_loss, (ref_out, ref_drop)), ref_grads = jax.jit(step)(state, x)

  mesh = mesh_lib.make_mesh(axes)
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    specs = nnx.get_partition_spec(state)
    placed = jax.tree.map(lambda a, s: jax.device_put(a, jax.sharding.NamedSharding(mesh, s)), state, specs,
                          is_leaf=lambda a: isinstance(a, jax.sharding.PartitionSpec))
    x_sharded = jax.device_put(x, mesh_lib.batch_sharding(mesh, 3))
    (got_loss, (got_out, got_drop)), got_grads = jax.jit(step)(placed, x_sharded)
  assert placed["gate_proj"][...].sharding.spec[0] == "expert"
  shard_experts = {s.data.shape[0] for s in placed["down_proj"][...].addressable_shards}
  assert shard_experts == {4 // axes["expert"]}
  np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_out), np.asarray(ref_out), atol=1e-5, rtol=1e-5)
  assert float(got_drop) == float(ref_drop)
  for got, ref in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-4)


def _sharded_layer_step(axes, length, dispatch="dropless"):
  """(mesh, jitted loss+grad of an MoE layer, its state placed by the rules, x placed by the batch rule)."""
  layer = make_moe(moe_dispatch=dispatch, moe_capacity_factor=1.0)
  graphdef, state = nnx.split(layer)
  mesh = mesh_lib.make_mesh(axes)
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    specs = nnx.get_partition_spec(state)
    placed = jax.tree.map(lambda a, s: jax.device_put(a, jax.sharding.NamedSharding(mesh, s)), state, specs,
                          is_leaf=lambda a: isinstance(a, jax.sharding.PartitionSpec))
    x = jax.device_put(random_x((8, length, 16), seed=3), mesh_lib.batch_sharding(mesh, 3))
  step = jax.value_and_grad(lambda st, x: jnp.sum(nnx.merge(graphdef, st)(x)[0] ** 2))
  return mesh, jax.jit(step), placed, x


@pytest.mark.parametrize("axes", [{"expert": 2, "fsdp": 4}, {"expert": 4, "fsdp": 2}], ids=["e2f4", "e4f2"])
def test_expert_parallel_dropless_moves_tokens_by_gather_and_reduce_scatter(axes):
  # Under the default rules the batch is split over the expert axis too: each device gathers its expert
  # group's tokens, runs its own experts and reduce-scatters the outputs back. No all-reduce carries tokens:
  # what is all-reduced (router gradient, loss) does not grow with the sequence; the gathers do.
  from polyglot_jax.plan import hlo
  per_length = {}
  for length in (64, 256):
    mesh, step, placed, x = _sharded_layer_step(axes, length)
    with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
      counts = hlo.collectives(step.lower(placed, x).compile().as_text())
    per_length[length] = {k: counts[k]["bytes"] for k in ("all-reduce", "all-gather", "reduce-scatter")}
  small, big = per_length[64], per_length[256]
  assert big["all-reduce"] == small["all-reduce"], per_length
  token_bytes_per_chip = 8 * 192 * 16 * 4 // 8  # The extra tokens of one device, float32.
  assert big["reduce-scatter"] - small["reduce-scatter"] >= token_bytes_per_chip, per_length
  assert big["all-gather"] - small["all-gather"] >= token_bytes_per_chip, per_length


# ---------------------------------------------------------------- the decoder


@pytest.fixture(scope="module", params=[dict(scan_layers=True), dict(scan_layers=False, moe_layers="1", num_layers=3)],
                ids=["scan_all_moe", "unrolled_mixed"])
def moe_model(request):
  cfg = make_cfg(init_std=0.2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=32, moe_shared_experts=1,
                 **request.param)
  with one_device():
    return Decoder(cfg, nnx.Rngs(params=2))


def test_decoder_has_moe_on_the_chosen_layers_and_gives_router_logits(moe_model):
  cfg = moe_model.cfg
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 10)), jnp.int32)
  seg = jnp.ones((2, 10), jnp.int32).at[1, 7:].set(0)
  logits, aux = moe_model(tokens, seg, return_aux=("router_logits", "expert_load", "dropped_fraction", "final_hidden"))
  n_moe = len(cfg.moe_layer_ids())
  assert logits.shape == (2, 10, 97)
  assert aux["router_logits"].shape == (n_moe, 20, 4) and aux["router_logits"].dtype == jnp.float32
  assert aux["expert_load"].shape == (n_moe, 4) and aux["dropped_fraction"].shape == (n_moe,)
  np.testing.assert_allclose(np.asarray(aux["expert_load"]).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(moe_model(tokens, seg)), atol=1e-6)
  if not cfg.scan_layers:
    assert [hasattr(b, "moe") for b in moe_model.blocks] == [False, True, False]
    # The layer's router logits are its own router applied to its FFN input.
    h = moe_model.embed(tokens)
    from polyglot_jax.models.layers import rope_tables
    cos, sin = rope_tables(jnp.broadcast_to(jnp.arange(10), (2, 10)), cfg.head_dim, cfg.rope_theta)
    h, _ = moe_model.blocks[0](h, cos, sin, seg)
    b1 = moe_model.blocks[1]
    h = h + b1.attn(b1.attn_norm(h), cos, sin, seg)
    expected = b1.moe.router_logits(b1.mlp_norm(h).reshape(20, -1))
    np.testing.assert_allclose(np.asarray(aux["router_logits"][0]), np.asarray(expected), atol=1e-5)


def test_moe_prefill_equals_forward_and_greedy_generation_equals_recompute(moe_model):
  tokens = jnp.asarray(np.arange(1, 21).reshape(2, 10) * 7 % 97, jnp.int32)
  logits, _ = moe_model.decode(tokens, jnp.broadcast_to(jnp.arange(10), (2, 10)), moe_model.init_cache(2, 32),
                               jnp.int32(0), jnp.ones((2, 32), jnp.int32))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(moe_model(tokens)), atol=2e-5)

  graphdef, state = nnx.split(moe_model)
  forward = jax.jit(lambda st, x, seg: nnx.merge(graphdef, st)(x, seg))

  def greedy_reference(prompt, n, width=24):
    seq = list(prompt)
    for _ in range(n):
      padded = np.zeros((1, width), np.int32)
      padded[0, :len(seq)] = seq
      seg = (np.arange(width) < len(seq)).astype(np.int32)[None]
      seq.append(int(jnp.argmax(forward(state, jnp.asarray(padded), jnp.asarray(seg))[0, len(seq) - 1])))
    return seq[len(prompt):]

  prompts = [[5, 17, 30, 42], [9], list(range(60, 72))]
  got = decode.generate(moe_model, prompts, 5)
  for prompt, new in zip(prompts, got):
    assert new == greedy_reference(prompt, 5)


def test_moe_generation_on_an_expert_mesh_equals_one_device(moe_model):
  # Decoding with the per-device dispatch: rows padded to the 8 batch shards (fsdp 4 × expert 2).
  prompts = [[5, 17, 30, 42], [9], list(range(10, 40))]
  mesh = mesh_lib.make_mesh({"expert": 2, "fsdp": 4})
  graphdef, state = nnx.split(moe_model)
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES):
    specs = nnx.get_partition_spec(state)
  placed = jax.tree.map(lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)), state, specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  expert_specs = [x.sharding.spec[-3] for path, x in jax.tree_util.tree_flatten_with_path(placed)[0]
                  if "'moe'" in jax.tree_util.keystr(path) and "'shared'" not in jax.tree_util.keystr(path)
                  and "gate_proj" in jax.tree_util.keystr(path)]
  assert expert_specs and set(expert_specs) == {"expert"}
  assert decode.generate(nnx.merge(graphdef, placed), prompts, 5) == decode.generate(moe_model, prompts, 5)


def test_dense_default_has_no_moe_parameters():
  with one_device():
    model = nnx.eval_shape(lambda: Decoder(make_cfg(num_experts=0), nnx.Rngs(params=0)))
  names = {"/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("moe" in name for name in names) and any("mlp" in name for name in names)
  graphdef, state = nnx.split(model)
  aux = jax.eval_shape(lambda st: nnx.merge(graphdef, st)(jnp.ones((1, 4), jnp.int32), return_aux=("router_logits",))[1],
                       state)
  assert aux["router_logits"].shape == (0, 4, 0)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("kw, key", [
    (dict(moe_top_k=5), "config.model.moe_top_k"),
    (dict(moe_dispatch="sinkhorn"), "config.model.moe_dispatch"),
    (dict(moe_grouped_matmul="gmm"), "config.model.moe_grouped_matmul"),
    (dict(moe_layers="every:x", scan_layers=False), "config.model.moe_layers"),
    (dict(moe_layers="0,7", scan_layers=False), "config.model.moe_layers"),
    (dict(moe_layers="every:2"), "config.model.scan_layers"),
])
def test_bad_moe_settings_are_one_line_errors(kw, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
    make_cfg(**kw)
  assert "\n" not in str(err.value)


def test_moe_layer_specs():
  cfg = make_cfg(num_layers=6, scan_layers=False)
  assert dataclasses.replace(cfg, moe_layers="all").moe_layer_ids() == (0, 1, 2, 3, 4, 5)
  assert dataclasses.replace(cfg, moe_layers="every:2").moe_layer_ids() == (1, 3, 5)
  assert dataclasses.replace(cfg, moe_layers="every:3").moe_layer_ids() == (2, 5)
  assert dataclasses.replace(cfg, moe_layers="5,0,2").moe_layer_ids() == (0, 2, 5)
  assert dataclasses.replace(cfg, num_experts=0).moe_layer_ids() == ()


def test_default_config_is_dense_and_carries_every_moe_key():
  model = config_lib.default_config().model
  cfg = ModelConfig.from_config(model)
  assert cfg.num_experts == 0 and cfg.moe_layer_ids() == ()
  for field in dataclasses.fields(ModelConfig):
    if field.name.startswith(("num_experts", "moe_")):
      assert model[field.name] == field.default


def test_expert_axis_must_divide_the_experts():
  mesh = mesh_lib.make_mesh({"expert": 4, "fsdp": 2})
  with mesh_lib.activate(mesh, config_lib.DEFAULT_RULES), pytest.raises(ValueError, match=r"config\.mesh\.expert=4"):
    moe_lib.MoE(make_cfg(num_experts=6), nnx.Rngs(params=0))


@pytest.mark.parametrize("block", [0, 4, 16])
def test_blocked_grouped_matmuls_equal_ragged_dot(block):
  # The CPU dropless path vs jax.lax.ragged_dot: uneven groups, an empty one, values and gradients.
  # block 4: the 40-row group takes a big 32-row piece then small ones; the 25-row group's last piece runs past its end.
  from polyglot_jax.models.moe import blocked_grouped_matmuls
  rng = np.random.default_rng(3)
  sizes = np.array([13, 0, 40, 1, 9, 25], np.int32)
  a, e, f = int(sizes.sum()), 12, 20
  x = jnp.asarray(rng.normal(size=(a, e)).astype(np.float32))
  ws = [jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.3)
        for shape in ((6, e, f), (6, e, f), (6, f, e))]
  g = jnp.asarray(sizes)

  def ragged(x, gate, up, down):
    h = jax.nn.silu(jax.lax.ragged_dot(x, gate, g)) * jax.lax.ragged_dot(x, up, g)
    return jax.lax.ragged_dot(h, down, g)

  def blocked(x, gate, up, down):
    return blocked_grouped_matmuls(x, g, gate, up, down, block=block)

  np.testing.assert_allclose(blocked(x, *ws), ragged(x, *ws), rtol=1e-5, atol=1e-5)
  probe = jnp.asarray(rng.normal(size=(a, e)).astype(np.float32))
  grads = [jax.grad(lambda *p, fn=fn: jnp.sum(fn(*p) * probe), argnums=(0, 1, 2, 3))(x, *ws)
           for fn in (blocked, ragged)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_megablox_swiglu_equals_ragged_dot_in_interpret_mode():
  # The TPU dropless path (Pallas grouped matmuls), run in interpret mode: uneven groups, an empty one,
  # and 30 rows past the groups (another device's assignments under expert parallelism), which must give 0
  # and get no gradient; values and gradients against ragged_dot with those rows in no group.
  from polyglot_jax.models.moe import megablox_swiglu
  rng = np.random.default_rng(4)
  sizes = np.array([13, 0, 140, 9], np.int32)
  a, e, f = int(sizes.sum()) + 30, 16, 24
  x = jnp.asarray(rng.normal(size=(a, e)).astype(np.float32))
  ws = [jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.3) for shape in ((4, e, f), (4, e, f), (4, f, e))]
  g = jnp.asarray(sizes)
  in_groups = (jnp.arange(a) < int(sizes.sum()))[:, None]

  def ragged(x, gate, up, down):
    h = jax.nn.silu(jax.lax.ragged_dot(x, gate, g)) * jax.lax.ragged_dot(x, up, g)
    return jnp.where(in_groups, jax.lax.ragged_dot(h, down, g), 0)

  def kernel(x, gate, up, down):
    return megablox_swiglu(x, g, gate, up, down, interpret=True)

  out = kernel(x, *ws)
  np.testing.assert_allclose(out, ragged(x, *ws), rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(out)[int(sizes.sum()):])
  probe = jnp.asarray(rng.normal(size=(a, e)).astype(np.float32))
  grads = [jax.grad(lambda *p, fn=fn: jnp.sum(fn(*p) * probe), argnums=(0, 1, 2, 3))(x, *ws)
           for fn in (kernel, ragged)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert not np.any(np.asarray(grads[0][0])[int(sizes.sum()):])


@pytest.mark.parametrize("impl", ["ragged_dot", "blocked"])
def test_grouped_matmul_choice_gives_the_same_layer(impl):
  # config.model.moe_grouped_matmul names the grouped matmul; on CPU auto is blocked. megablox needs a TPU.
  x = random_x((2, 12, 16), seed=5)
  with one_device():
    assert moe_lib.grouped_matmul_impl("auto") == "blocked"
    with pytest.raises(ValueError, match=r"moe_grouped_matmul='megablox' needs a TPU \(platform here: cpu\)"):
      moe_lib.grouped_matmul_impl("megablox")
    auto = make_moe()
    chosen = moe_lib.MoE(make_cfg(moe_grouped_matmul=impl), nnx.Rngs(params=0))
    np.testing.assert_allclose(np.asarray(chosen(x)[0]), np.asarray(auto(x)[0]), rtol=1e-5, atol=1e-6)
