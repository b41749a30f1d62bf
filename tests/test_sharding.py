"""Parameter shardings (pinned by hand); FSDP memory; sharded == single-device numerics over several steps."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.train.state import path_names
from polyglot_jax.train.trainer import build, global_batch


def random_batch(config, seed=0):
  d = config.data
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, config.model.vocab_size, (d.global_batch_size, d.seq_len + 1)).astype(np.int32)
  seg = np.ones((d.global_batch_size, d.seq_len), np.int32)
  seg[:, d.seq_len // 2:] = 2
  pos = np.concatenate([np.arange(d.seq_len // 2)] * 2)[None].repeat(d.global_batch_size, 0).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": np.ones_like(seg),
          "segment_ids": seg, "positions": pos, "lang_ids": (np.arange(d.global_batch_size) % 3)[:, None] * np.ones_like(seg)}


P = PartitionSpec
# Every parameter of the tiny model (scan_layers: a leading layers dim of 2; tied
# embeddings: no lm_head) with its PartitionSpec under config.DEFAULT_RULES, written
# out by hand: embed → fsdp; vocab, heads, kv_heads and mlp → tensor; layers and
# head_dim replicated.
EXPECTED_SPECS = {
    ("embedding",): ((2048, 32), P("tensor", "fsdp")),
    ("final_norm", "scale"): ((32,), P("fsdp")),
    ("blocks", "attn_norm", "scale"): ((2, 32), P(None, "fsdp")),
    ("blocks", "mlp_norm", "scale"): ((2, 32), P(None, "fsdp")),
    ("blocks", "attn", "q_proj"): ((2, 32, 4, 8), P(None, "fsdp", "tensor", None)),
    ("blocks", "attn", "k_proj"): ((2, 32, 2, 8), P(None, "fsdp", "tensor", None)),
    ("blocks", "attn", "v_proj"): ((2, 32, 2, 8), P(None, "fsdp", "tensor", None)),
    ("blocks", "attn", "o_proj"): ((2, 4, 8, 32), P(None, "tensor", None, "fsdp")),
    ("blocks", "mlp", "gate_proj"): ((2, 32, 64), P(None, "fsdp", "tensor")),
    ("blocks", "mlp", "up_proj"): ((2, 32, 64), P(None, "fsdp", "tensor")),
    ("blocks", "mlp", "down_proj"): ((2, 64, 32), P(None, "tensor", "fsdp")),
}
# What each device holds of a few of them on each mesh, also by hand.
EXPECTED_SHARD_SHAPES = {
    "fsdp8": {  # fsdp=8, tensor=1: only the embed dim is split, 32 / 8 = 4.
        ("embedding",): (2048, 4),
        ("final_norm", "scale"): (4,),
        ("blocks", "attn", "q_proj"): (2, 4, 4, 8),
        ("blocks", "attn", "k_proj"): (2, 4, 2, 8),
        ("blocks", "mlp", "down_proj"): (2, 64, 4),
    },
    "2x2x2": {  # data=2, fsdp=2, tensor=2: embed / 2, and vocab, heads, kv_heads, mlp / 2.
        ("embedding",): (1024, 16),
        ("final_norm", "scale"): (16,),
        ("blocks", "attn", "q_proj"): (2, 16, 2, 8),
        ("blocks", "attn", "k_proj"): (2, 16, 1, 8),
        ("blocks", "mlp", "down_proj"): (2, 32, 16),
    },
}
MESHES = {"fsdp8": dict(fsdp=-1), "2x2x2": dict(data=2, fsdp=2, tensor=2)}


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_parameter_shardings_are_the_expected_ones(make_config, mesh_name):
  config = make_config()
  setup = build(config, 3, mesh=mesh_lib.make_mesh(MESHES[mesh_name]))
  state = setup.init_fn()
  flat = {path_names(path): x for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert sorted(flat) == sorted(EXPECTED_SPECS)
  for key, (shape, spec) in EXPECTED_SPECS.items():
    array = flat[key]
    assert array.shape == shape, (key, array.shape)
    assert array.sharding.spec == spec, (key, array.sharding.spec, spec)
    assert array.sharding.mesh.shape == setup.mesh.shape
  for key, shard_shape in EXPECTED_SHARD_SHAPES[mesh_name].items():
    shards = flat[key].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {shard_shape}, (key, shards[0].data.shape)
  # Adam's moments are laid out like their parameters.
  q_spec = EXPECTED_SPECS["blocks", "attn", "q_proj"][1]
  q_like = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (2, 32, 4, 8)]
  assert len(q_like) >= 2 and all(x.sharding.spec == q_spec for x in q_like)


def test_fsdp_per_device_bytes(make_config):
  config = make_config(model__d_model=64, model__mlp_dim=128, model__num_layers=2)
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  state = setup.init_fn()
  leaves = jax.tree.leaves((state.params, state.opt_state))
  total = sum(x.nbytes for x in leaves)
  device0 = jax.devices()[0]
  per_device = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device0)
  assert per_device <= 1.05 * total / 8, (per_device, total / 8)


STEPS = 4  # Warm-up from 0 makes step 1's update exactly zero; steps 2.. move the parameters.
# Same program on one device and on 2x2x2: only the order in which partial sums
# are added differs, so params drift apart by a few ulps per step. Seen after
# 4 steps: ≤ 4.7e-7 abs, while every parameter tensor has moved by ≥ 6.8e-3 from init
# (after step 1 alone: 0.0 and 0.0, which is why one step proves nothing).
PARAM_ATOL = 2e-6
MIN_MOVE = 1e-3


@pytest.mark.parametrize("model, sharded_mesh", [
    ({}, {"data": 2, "fsdp": 2, "tensor": 2}),
    # MoE (4 experts, top-2, dropless) with expert parallelism: the per-device dispatch
    # (models/moe.py expert_parallel_swiglu) with the batch split over fsdp × expert.
    ({"model__num_experts": 4, "model__moe_top_k": 2}, {"expert": 2, "fsdp": 2, "tensor": 2}),
], ids=["dense-2x2x2", "moe-expert2-fsdp2-tensor2"])
def test_sharded_and_single_device_steps_agree(make_config, model, sharded_mesh):
  config = make_config(**model)
  assert config.optimizer.warmup_steps >= 1
  batches = [random_batch(config, seed) for seed in range(STEPS)]
  results = {}
  for name, devices, mesh in (("single", jax.devices()[:1], {"fsdp": 1}),
                              ("2x2x2", jax.devices(), sharded_mesh)):
    setup = build(config, 3, mesh=mesh_lib.make_mesh(mesh, devices))
    state = setup.init_fn()
    initial = jax.device_get(state.params)  # The step donates (frees) its input state.
    metrics = []
    for batch_np in batches:
      state, step_metrics = setup.train_step(state, global_batch(setup, batch_np))
      metrics.append(jax.device_get(step_metrics))
    results[name] = (initial, jax.device_get(state.params), metrics)
  (p0_a, p_a, m_a), (p0_b, p_b, m_b) = results["single"], results["2x2x2"]
  jax.tree.map(np.testing.assert_array_equal, p0_a, p0_b)  # Same init.
  for step, (a, b) in enumerate(zip(m_a, m_b), 1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6, err_msg=f"step {step}")
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5, err_msg=f"step {step}")
    # Every other step output too (per-language loss sums, weights, counters), whatever its nesting.
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, err_msg=f"step {step} {jax.tree_util.keystr(path)}")
  # The steps really trained: every parameter moved far beyond the tolerance below.
  flat0 = dict(jax.tree_util.tree_flatten_with_path(p0_a)[0])
  for path, p in jax.tree_util.tree_flatten_with_path(p_a)[0]:
    moved = np.abs(p - flat0[path]).max()
    assert moved > MIN_MOVE, (path_names(path), moved)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL), p_a, p_b)


def test_mesh_that_does_not_fit_is_named():
  with pytest.raises(mesh_lib.MeshError, match=r"needs 16 devices but 8 are present"):
    mesh_lib.make_mesh({"data": 2, "fsdp": 8})
  with pytest.raises(mesh_lib.MeshError, match=r"multiply to 3, which does not divide the 8 devices"):
    mesh_lib.make_mesh({"data": 3, "fsdp": -1})
  with pytest.raises(mesh_lib.MeshError, match="unknown axis"):
    mesh_lib.make_mesh({"model": 8})


def test_logical_name_without_rule_is_named():
  with pytest.raises(mesh_lib.MeshError, match="logical axis 'experts' has no entry"):
    mesh_lib.logical_to_spec(("experts",), (("embed", "fsdp"),))


def test_sequence_parallel_residual_stream_gives_the_same_loss(make_config):
  # ("act_length", "tensor") shards the residual stream's length over the tensor axis between blocks.
  base = make_config()
  rules = tuple(("act_length", "tensor") if name == "act_length" else (name, t)
                for name, t in base.logical_axis_rules)
  sp = make_config(logical_axis_rules=rules)
  batch_np = random_batch(base, 0)
  mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  losses, texts = {}, {}
  for name, config in (("plain", base), ("sequence", sp)):
    setup = build(config, 3, mesh=mesh_lib.make_mesh(mesh, jax.devices()))
    state = setup.init_fn()
    batch = global_batch(setup, batch_np)
    texts[name] = setup.train_step.lower(state, batch).as_text()
    _, metrics = setup.train_step(state, batch)
    losses[name] = jax.device_get((metrics["loss"], metrics["grad_norm"]))
  np.testing.assert_allclose(losses["sequence"], losses["plain"], rtol=1e-5)
  # The rule reached the program: the residual stream [B, L, E] is constrained to L over tensor.
  residual = '<@mesh, [{"data", "fsdp", "expert"}, {"tensor"}, {}]> : tensor<8x64x32xf32>'
  assert texts["plain"].count(residual) == 0
  assert texts["sequence"].count(residual) >= 4, "the residual stream is not constrained to length over tensor"
