"""MoE router losses in the LM objective, dense → MoE upcycling, and the MoE-LPR stages (freezing, LPR)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import polyglot_jax
from polyglot_jax import cli
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives import lm, moe_lpr
from polyglot_jax.train.build import build, global_batch
from polyglot_jax.train.metrics import MetricWindow
from polyglot_jax.train.state import path_names
from polyglot_jax.train.trainer import train_and_evaluate

import reference
from test_sharding import random_batch

MOE = dict(model__num_experts=4, model__moe_top_k=2, model__init_std=0.2, data__seq_len=16)


def one_device():
  return mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])


# ---------------------------------------------------------------- NumPy references of the formulas


def np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_balance(logits, k, mask):
  """N·Σ f_i·P_i over the tokens in mask: f_i share of top-k assignments, P_i mean probability."""
  probs = np.exp(np_log_softmax(logits))[mask]
  n = logits.shape[-1]
  top = np.argsort(-probs, axis=-1)[:, :k]
  f = np.bincount(top.reshape(-1), minlength=n) / top.size
  return n * np.sum(f * probs.mean(0)), f


def np_z(logits, mask):
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  return np.mean(lse[mask] ** 2)


def np_lpr(logits, is_original):
  return -np_log_softmax(logits)[is_original, 0].mean() if is_original.any() else 0.0


def padded_batch(config, seed=0):
  """random_batch with the last 3 positions of every other row as padding (segment 0, no loss)."""
  batch = random_batch(config, seed)
  batch["segment_ids"][::2, -3:] = 0
  batch["loss_weights"][::2, -3:] = 0
  return batch


def router_logits(setup, params, batch):
  """[M, T, N] router logits of the model (the decoder's own aux output), as float64 NumPy."""
  with mesh_lib.activate(setup.mesh, setup.config.logical_axis_rules):
    model = nnx.merge(setup.graphdef, params)
    logits, aux = model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]),
                        jnp.asarray(batch["positions"]), return_aux=("router_logits",))
  return np.asarray(logits, np.float64), np.asarray(aux["router_logits"], np.float64)


# ---------------------------------------------------------------- losses


def test_lpr_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(29, 5)).astype(np.float32) * 3
  is_original = rng.random(29) < 0.4
  got = moe_lpr.lpr_loss(jnp.asarray(logits), jnp.asarray(is_original))
  np.testing.assert_allclose(float(got), np_lpr(logits, is_original), rtol=1e-5)
  # No original token: 0, not NaN. All mass on expert 0: 0.
  assert float(moe_lpr.lpr_loss(jnp.asarray(logits), jnp.zeros(29, bool))) == 0.0
  peaked = np.zeros((3, 4), np.float32)
  peaked[:, 0] = 50.0
  assert float(moe_lpr.lpr_loss(jnp.asarray(peaked), jnp.ones(3, bool))) < 1e-12


def test_lm_objective_adds_balance_and_z_loss_from_the_router_logits(make_config):
  alpha, beta = 0.05, 0.02
  # Layer 0 dense, layer 1 MoE (unrolled); two micro-batches per step with different token counts.
  config = make_config(**MOE, model__moe_layers="1", model__scan_layers=False, optimizer__grad_accum_steps=2,
                       optimizer__moe_balance_weight=alpha, optimizer__moe_z_loss=beta)
  setup = build(config, 3, mesh=one_device())
  objective = setup.objective
  assert objective.aux_outputs == lm.MOE_AUX
  assert {"moe/balance_loss", "moe/z_loss", "moe/expert_load/layer_1/expert_3"} <= set(objective.metrics)
  assert "moe/expert_load/layer_0/expert_0" not in objective.metrics  # Layer 0 is dense.
  state = setup.init_fn()
  params = jax.device_get(state.params)
  batch = padded_batch(config)
  batch["loss_weights"][1::4, 5:] = 0

  # The trainer's micro-batch m is rows m::2. Per micro-batch, from the model's router logits:
  # loss sum = CE sum + w_m·(α·balance_m + β·z_m), w_m its target tokens; the step divides by Σ w_m.
  loss_sum = tokens = 0.0
  balance_sum, z_sum, load_sum, real = 0.0, 0.0, np.zeros(4), 0
  for m in range(2):
    micro = {k: v[m::2] for k, v in batch.items()}
    logits, router = router_logits(setup, params, micro)
    mask = micro["segment_ids"].reshape(-1) != 0
    w_m = micro["loss_weights"].sum()
    balance_m, f_m = np_balance(router[0], 2, mask)
    z_m = np_z(router[0], mask)
    loss_sum += (reference.cross_entropy(logits, micro["targets"])[0] * micro["loss_weights"]).sum()
    loss_sum += w_m * (alpha * balance_m + beta * z_m)
    tokens += w_m
    balance_sum, z_sum = balance_sum + w_m * balance_m, z_sum + w_m * z_m
    load_sum, real = load_sum + f_m * mask.sum(), real + mask.sum()
  _, out = setup.train_step(state, global_batch(setup, batch))
  np.testing.assert_allclose(float(out["loss"]), loss_sum / tokens, rtol=1e-5)
  row = _summary(objective, out["outputs"])
  np.testing.assert_allclose(row["moe/balance_loss"], balance_sum / tokens, rtol=1e-5)
  np.testing.assert_allclose(row["moe/z_loss"], z_sum / tokens, rtol=1e-5)
  # Expert load: the share of the step's (real token, slot) assignments, exact over micro-batches.
  np.testing.assert_allclose([row[f"moe/expert_load/layer_1/expert_{j}"] for j in range(4)], load_sum / real,
                             rtol=1e-5)
  # A dense model asks the decoder for nothing more and reports the LM metrics only.
  dense = lm.LanguageModelling(make_config(), 3)
  assert dense.aux_outputs == () and dense.metrics == lm.LM_METRICS


def _summary(objective, outputs):
  window = MetricWindow(objective.metrics, ["eng", "fra", "deu"])
  window.add(jax.device_get(outputs))
  return window.summary()


# ---------------------------------------------------------------- upcycling


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, demo_data):
  """A tiny dense model trained 3 steps (a training workdir)."""
  from conftest import tiny_config
  workdir = str(tmp_path_factory.mktemp("moe_lpr") / "dense")
  config = tiny_config(demo_data, data__eval_files=(), data__seq_len=16, train__num_steps=3,
                       checkpoint__every_steps=3, model__init_std=0.2)
  train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
def test_upcycled_model_computes_what_the_dense_one_did(dense_run, tmp_path, capsys):
  out = str(tmp_path / "moe")
  assert cli.main(["moe", "upcycle", "--from", dense_run, "--workdir", out, "--num_experts", "4",
                   "--top_k", "2"]) == 0
  printed = capsys.readouterr().out
  assert f"wrote {out}: 4 experts, top-2, MoE layers [0, 1] of 2" in printed
  dense, moe = polyglot_jax.load(dense_run), polyglot_jax.load(out)
  assert moe.config.model.num_experts == 4 and moe.config.model.moe_top_k == 2 and moe.tokenizer is not None
  d_mlp, experts = dense.params["blocks"]["mlp"], moe.params["blocks"]["moe"]
  for name in ("gate_proj", "up_proj", "down_proj"):
    for j in range(4):  # [layers, N, ...]: every expert is the dense FFN, bit for bit.
      np.testing.assert_array_equal(np.asarray(experts[name])[:, j], np.asarray(d_mlp[name]))
  assert experts["router"].shape == (2, 32, 4) and np.asarray(experts["router"]).std() > 0
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 2048, (2, 16)), jnp.int32)
  want = np.asarray(dense.model(tokens))
  np.testing.assert_allclose(np.asarray(moe.model(tokens)), want, rtol=1e-5, atol=1e-5)
  # One MoE layer (unrolled, dense layer 0 kept) with noisy copies: expert 0 is still the FFN.
  noisy = str(tmp_path / "noisy")
  assert cli.main(["moe", "upcycle", "--from", dense_run, "--workdir", noisy, "--num_experts", "3",
                   "--top_k", "1", "--layers", "1", "--noise", "0.1"]) == 0
  part = polyglot_jax.load(noisy)
  assert part.config.model.scan_layers is False and set(part.params["blocks"][0]) >= {"mlp"}
  gate = np.asarray(part.params["blocks"][1]["moe"]["gate_proj"])
  np.testing.assert_array_equal(gate[0], np.asarray(d_mlp["gate_proj"])[1])
  spread = np.std(gate[1] - gate[0]) / np.std(gate[0])
  assert 0.05 < spread < 0.2  # Noise of 0.1 × the weight's std.


@pytest.mark.slow
def test_upcycle_errors_are_one_line(dense_run, tmp_path, capsys):
  def run(*flags, source=dense_run):
    capsys.readouterr()
    code = cli.main(["moe", "upcycle", "--from", source, "--workdir", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    return err

  assert "--top_k=5 must be in 1..--num_experts=4" in run("--num_experts", "4", "--top_k", "5")
  assert "--layers 0,7" in run("--num_experts", "4", "--layers", "0,7") and "outside 0..1" in \
      run("--num_experts", "4", "--layers", "0,7")
  # A checkpoint whose shapes are not those its config.json says.
  broken = str(tmp_path / "broken")
  shutil.copytree(dense_run, broken)
  with open(os.path.join(broken, "config.json")) as f:
    config = json.load(f)
  config["model"]["mlp_dim"] = 48
  with open(os.path.join(broken, "config.json"), "w") as f:
    json.dump(config, f)
  err = run("--num_experts", "4", source=broken)
  assert "blocks.0.mlp.gate_proj has shape (32, 64) but its config says (32, 48)" in err


# ---------------------------------------------------------------- MoE-LPR stages


def _changed(before, after):
  """Paths (as tuples) of the parameters that differ at all."""
  flat_b = {path_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(before)[0]}
  flat_a = {path_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(after)[0]}
  return {p for p in flat_b if not np.array_equal(flat_b[p], flat_a[p])}, flat_b, flat_a


def _train(setup, config, steps):
  state = setup.init_fn()
  before = jax.device_get(state.params)
  for seed in range(steps):  # The first step's learning rate is 0 (warmup starts there).
    state, out = setup.train_step(state, global_batch(setup, padded_batch(config, seed)))
  return state, before, jax.device_get(state.params), out


def test_stage1_keeps_everything_but_new_experts_and_router_bit_identical(make_config):
  # Weight decay 0.1 on: decoupled decay would shrink expert 0 if only its gradient were stopped.
  config = make_config(**MOE, objective="moe_lpr", optimizer__weight_decay=0.1)
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"expert": 2, "fsdp": 1}, jax.devices()[:2]))
  opt_paths = {path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(setup.abstract_state.opt_state)[0]}
  assert any(p[-1] == "router" for p in opt_paths) and any(p[-1] == "gate_proj" for p in opt_paths)
  assert not any(name in p for p in opt_paths for name in ("attn", "embedding", "attn_norm", "mlp_norm"))
  state, before, after, out = _train(setup, config, 3)
  assert np.isfinite(float(out["loss"])) and float(out["outputs"]["moe_balance_sum"]) > 0
  changed, b, a = _changed(before, after)
  assert changed == {("blocks", "moe", name) for name in ("router", "gate_proj", "up_proj", "down_proj")}
  for name in ("gate_proj", "up_proj", "down_proj"):
    np.testing.assert_array_equal(a[("blocks", "moe", name)][:, 0], b[("blocks", "moe", name)][:, 0])
    for j in (1, 2, 3):
      assert not np.array_equal(a[("blocks", "moe", name)][:, j], b[("blocks", "moe", name)][:, j])


def test_stage2_trains_only_the_router_with_lm_plus_lpr(make_config):
  gamma = 0.5
  config = make_config(**MOE, objective="moe_lpr", moe_lpr__stage=2, moe_lpr__lpr_weight=gamma,
                       moe_lpr__original_languages=("en", "fra"), data__languages=("eng", "fra", "deu"),
                       optimizer__moe_balance_weight=0.0, optimizer__moe_z_loss=0.0)
  setup = build(config, 3, mesh=one_device())
  assert setup.objective.original_ids == (0, 1)
  state = setup.init_fn()
  batch = padded_batch(config)
  logits, router = router_logits(setup, jax.device_get(state.params), batch)
  is_original = (np.isin(batch["lang_ids"], [0, 1]) & (batch["segment_ids"] != 0)).reshape(-1)
  lpr = np.mean([np_lpr(r, is_original) for r in router])
  ce, _ = reference.cross_entropy(logits, batch["targets"])
  w = batch["loss_weights"]
  before = jax.device_get(state.params)
  state, out = setup.train_step(state, global_batch(setup, batch))
  np.testing.assert_allclose(float(out["loss"]), (ce * w).sum() / w.sum() + gamma * lpr, rtol=1e-5)
  row = _summary(setup.objective, out["outputs"])
  np.testing.assert_allclose(row["moe/lpr_loss"], lpr, rtol=1e-5)
  g0 = np.exp(np_log_softmax(router))[..., 0].mean(0)
  np.testing.assert_allclose(row["moe/expert0_prob_original"], g0[is_original].mean(), rtol=1e-5)
  for seed in (1, 2):  # The first step's learning rate is 0 (warmup starts there).
    state, _ = setup.train_step(state, global_batch(setup, padded_batch(config, seed)))
  assert _changed(before, jax.device_get(state.params))[0] == {("blocks", "moe", "router")}


@pytest.mark.parametrize("overrides, message", [
    (dict(moe_lpr__original_languages=("eng", "swa")), "names 'swa', which is not in the data"),
    (dict(moe_lpr__original_languages=("qqq",)), "names 'qqq', which is not a registered language"),
    (dict(moe_lpr__original_languages=("eng",), data__languages=()), "needs config.data.languages"),
    (dict(moe_lpr__original_languages=()), "original_languages is empty"),
    (dict(moe_lpr__original_languages=("eng",), model__num_experts=0), "needs an MoE model"),
])
def test_stage2_config_errors_name_the_language_or_key(make_config, overrides, message):
  kw = {**MOE, "objective": "moe_lpr", "moe_lpr__stage": 2, "data__languages": ("eng", "fra", "deu"), **overrides}
  with pytest.raises(ConfigError, match=message) as e:
    moe_lpr.MoELanguagePrior(make_config(**kw), 3)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------- router losses in the other objectives


def _spec_batch(objective, rng):
  """A random batch of the objective's fields: real tokens, one document per row, full weights."""
  batch = {}
  for name, spec in objective.batch_spec().items():
    shape = (4,) + tuple(spec.shape)
    if name.endswith("inputs") or name.endswith("targets"):
      batch[name] = rng.integers(1, 2000, shape).astype(np.int32)
    elif name.endswith("segment_ids") or name.endswith("loss_weights"):
      batch[name] = np.ones(shape, np.float32 if "weights" in name else np.int32)
    elif name.endswith("positions"):
      batch[name] = np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape).copy()
    else:  # lang ids, word ids and groups: zeros (no anchor words).
      batch[name] = np.zeros(shape, np.int32)
  return batch


@pytest.mark.parametrize("objective_name, extra", [
    ("sft", {"data__kind": "instruction"}),
    ("dpo", {"data__kind": "preference", "dpo__loss_type": "simpo"}),
    ("prealign", {"data__kind": "word_groups"}),
])
def test_sft_dpo_and_prealign_add_the_router_losses(make_config, objective_name, extra):
  from polyglot_jax.objectives.base import StepContext
  alpha, beta = 0.05, 0.02
  configs = {w: make_config(**MOE, objective=objective_name, optimizer__moe_balance_weight=w[0],
                            optimizer__moe_z_loss=w[1], **extra) for w in ((alpha, beta), (0.0, 0.0))}
  setup = build(configs[(alpha, beta)], 3, mesh=one_device())
  params = setup.init_fn().params
  batch = jax.tree.map(jnp.asarray, _spec_batch(setup.objective, np.random.default_rng(0)))
  # The router logits of every token the objective's forward sees (DPO: chosen and rejected rows).
  rows = (jnp.concatenate([batch["chosen_inputs"], batch["rejected_inputs"]]) if objective_name == "dpo"
          else batch["inputs"])
  losses = {}
  with mesh_lib.activate(setup.mesh, setup.config.logical_axis_rules):
    model = nnx.merge(setup.graphdef, params)
    _, aux = model(rows, jnp.ones_like(rows), jnp.broadcast_to(jnp.arange(rows.shape[1]), rows.shape),
                   return_aux=("router_logits",))
    for weights, config in configs.items():
      objective = type(setup.objective)(config, 3)
      assert set(lm.MOE_AUX) <= set(objective.aux_outputs)
      assert {"moe/balance_loss", "moe/z_loss"} <= set(objective.metrics)
      ctx = (StepContext(rng=None, step=0, normalizers=objective.normalizers(batch)) if objective.prenormalized
             else None)
      loss, _, outputs = objective.loss_sums(model, batch, ctx)
      losses[weights] = float(loss)
  router = np.asarray(aux["router_logits"], np.float64)
  mask = np.ones(router.shape[1], bool)
  balance = np.mean([np_balance(r, 2, mask)[0] for r in router])
  z = np.mean([np_z(r, mask) for r in router])
  norm = {"sft": "weight", "dpo": "pairs", "prealign": "tokens"}[objective_name]
  np.testing.assert_allclose(float(outputs["moe_balance_sum"] / outputs[norm]), balance, rtol=1e-5)
  np.testing.assert_allclose(float(outputs["moe_z_sum"] / outputs[norm]), z, rtol=1e-5)
  term = (alpha * balance + beta * z) * float(outputs[norm])
  if objective.prenormalized:
    term /= float(ctx.normalizers["tokens"])
  np.testing.assert_allclose(losses[(alpha, beta)] - losses[(0.0, 0.0)], term, rtol=1e-4)
