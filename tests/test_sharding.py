"""Shardings follow the logical rules; FSDP memory; sharded == single-device numerics."""

import jax
import numpy as np
import pytest
from flax import nnx

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


def logical_names(setup):
  """Parameter path → logical axis names, from the abstract model's metadata."""
  with mesh_lib.activate(setup.mesh, setup.config.logical_axis_rules):
    model = nnx.eval_shape(lambda: __import__("polyglot_jax.models.decoder", fromlist=["Decoder"]).Decoder(
        setup.model_cfg, nnx.Rngs(params=0)))
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    out[tuple(str(p) for p in path)] = var.get_metadata()["out_sharding"]
  return out


@pytest.mark.parametrize("mesh", [dict(fsdp=-1), dict(data=2, fsdp=2, tensor=2)])
def test_parameter_shardings_follow_the_rules(make_config, mesh):
  config = make_config()
  setup = build(config, 3, mesh=mesh_lib.make_mesh(mesh))
  names = logical_names(setup)
  state = setup.init_fn()
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  assert len(flat) == len(names)
  for path, array in flat:
    key = path_names(path)
    expected = mesh_lib.logical_to_spec(names[key], config.logical_axis_rules)
    assert array.sharding.spec == expected, (key, array.sharding.spec, expected)
    assert array.sharding.mesh.shape == setup.mesh.shape


def test_fsdp_per_device_bytes(make_config):
  config = make_config(model__d_model=64, model__mlp_dim=128, model__num_layers=2)
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  state = setup.init_fn()
  leaves = jax.tree.leaves((state.params, state.opt_state))
  total = sum(x.nbytes for x in leaves)
  device0 = jax.devices()[0]
  per_device = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device0)
  assert per_device <= 1.05 * total / 8, (per_device, total / 8)


def test_sharded_and_single_device_steps_agree(make_config):
  config = make_config()
  batch_np = random_batch(config)
  results = {}
  for name, devices, mesh in (("single", jax.devices()[:1], {"fsdp": 1}),
                              ("2x2x2", jax.devices(), {"data": 2, "fsdp": 2, "tensor": 2})):
    setup = build(config, 3, mesh=mesh_lib.make_mesh(mesh, devices))
    state = setup.init_fn()
    initial = jax.device_get(state.params)  # The step donates (frees) its input state.
    new_state, metrics = setup.train_step(state, global_batch(setup, batch_np))
    results[name] = (initial, jax.device_get(new_state.params), jax.device_get(metrics))
  (p0_a, p1_a, m_a), (p0_b, p1_b, m_b) = results["single"], results["2x2x2"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p0_a, p0_b)  # Same init.
  np.testing.assert_allclose(m_a["loss"], m_b["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_a["grad_norm"], m_b["grad_norm"], rtol=1e-5)
  np.testing.assert_allclose(m_a["lang_loss_sum"], m_b["lang_loss_sum"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), p1_a, p1_b)


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
