"""LM loss against its NumPy formula, gradient accumulation, the NaN guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.objectives import lm
from polyglot_jax.objectives.base import per_language_sums, register
from polyglot_jax.train.trainer import build, global_batch

import reference
from test_sharding import random_batch


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, (2, 5))
  ce, log_z = lm.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  ref_ce, ref_z = reference.cross_entropy(logits, targets)
  np.testing.assert_allclose(np.asarray(ce), ref_ce, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(log_z), ref_z, rtol=1e-5, atol=1e-6)


def test_per_language_sums():
  values = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  weights = jnp.asarray([[1, 1, 0], [1, 1, 1]])
  lang = jnp.asarray([[0, 2, 2], [1, 1, 2]])
  sums, counts = per_language_sums(values, weights, lang, 3)
  np.testing.assert_allclose(np.asarray(sums), [1.0, 9.0, 8.0])
  np.testing.assert_allclose(np.asarray(counts), [1.0, 2.0, 2.0])


def test_lm_objective_loss_and_z_loss_match_numpy(make_config):
  config = make_config(optimizer__z_loss=1e-2)
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  state = setup.init_fn()
  batch = random_batch(config)
  batch["loss_weights"][:, -5:] = 0
  params = jax.device_get(state.params)
  logits = reference.decoder_logits(params, setup.model_cfg, batch["inputs"], batch["segment_ids"], batch["positions"])
  ce, log_z = reference.cross_entropy(logits, batch["targets"])
  w = batch["loss_weights"]
  with mesh_lib.activate(setup.mesh, config.logical_axis_rules):
    model = nnx.merge(setup.graphdef, state.params)
    loss_sum, weight, sums = setup.objective.loss_sums(model, jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(weight), w.sum())
  np.testing.assert_allclose(float(sums["ce_sum"]), (ce * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(loss_sum), (ce * w).sum() + 1e-2 * (log_z ** 2 * w).sum(), rtol=1e-5)
  for lang in range(3):
    sel = w * (batch["lang_ids"] == lang)
    np.testing.assert_allclose(float(sums["lang_loss_sum"][lang]), (ce * sel).sum(), rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(make_config):
  batch = random_batch(make_config())
  batch["loss_weights"][::3, 10:] = 0  # Uneven token counts across micro-batches.
  out = {}
  for accum in (1, 4):
    config = make_config(optimizer__grad_accum_steps=accum)
    setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
    state, metrics = setup.train_step(setup.init_fn(), global_batch(setup, batch))
    out[accum] = (jax.device_get(state.params), jax.device_get(metrics))
  np.testing.assert_allclose(out[1][1]["loss"], out[4][1]["loss"], rtol=1e-6)
  np.testing.assert_allclose(out[1][1]["grad_norm"], out[4][1]["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), out[1][0], out[4][0])


POISON = 7  # A batch whose first input token is this gets a NaN loss.


@register("poisoned_lm")
class PoisonedLM(lm.LanguageModelling):
  """LM loss, NaN on batches that start with token POISON (tests only)."""

  def loss_sums(self, model, batch, rng):
    loss_sum, weight, sums = super().loss_sums(model, batch, rng)
    poisoned = batch["inputs"][0, 0] == POISON
    return jnp.where(poisoned, jnp.nan, loss_sum), weight, sums


def test_nan_guard_skips_the_update(make_config):
  config = make_config(objective="poisoned_lm")
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  state = setup.init_fn()
  good, bad = random_batch(config, 0), random_batch(config, 1)
  bad["inputs"][0, 0] = POISON
  good["inputs"][0, 0] = POISON + 1
  state, m = setup.train_step(state, global_batch(setup, good))
  before = jax.device_get((state.params, state.opt_state))
  state, m = setup.train_step(state, global_batch(setup, bad))
  after = jax.device_get((state.params, state.opt_state))
  assert int(m["skipped_steps"]) == 1 and int(m["consecutive_skips"]) == 1
  assert int(state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, before, after)
  state, m = setup.train_step(state, global_batch(setup, good))
  assert int(m["skipped_steps"]) == 1 and int(m["consecutive_skips"]) == 0
  assert np.isfinite(float(m["loss"]))


class EmbeddingFrozenLM(lm.LanguageModelling):
  """LM with the embedding frozen (tests the trainable/frozen split)."""

  def trainable(self, path):
    return path[0] != "embedding"


register("embedding_frozen_lm")(EmbeddingFrozenLM)


def test_frozen_parameters_get_no_optimizer_state_and_do_not_move(make_config):
  config = make_config(objective="embedding_frozen_lm")
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  state = setup.init_fn()
  opt_paths = {tuple(str(getattr(k, "key", k)) for k in path)
               for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]}
  assert not any("embedding" in p for p in opt_paths)
  assert any("q_proj" in p for p in opt_paths)
  before = jax.device_get(state.params)
  for seed in range(3):  # The first step's learning rate is 0 (warmup starts there): take several.
    state, _ = setup.train_step(state, global_batch(setup, random_batch(config, seed)))
  after = jax.device_get(state.params)
  np.testing.assert_array_equal(before["embedding"], after["embedding"])
  assert not np.array_equal(before["final_norm"]["scale"], after["final_norm"]["scale"])


def test_weight_decay_mask_spares_norms_and_biases():
  from polyglot_jax.train.optimizer import decay_mask
  mask = decay_mask({"embedding": 0, "blocks": {"attn": {"q_proj": 0, "q_bias": 0}, "attn_norm": {"scale": 0}}})
  assert mask == {"embedding": True, "blocks": {"attn": {"q_proj": True, "q_bias": False}, "attn_norm": {"scale": False}}}


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_learning_rate_schedules(make_config, schedule):
  from polyglot_jax.train.optimizer import learning_rate_schedule
  opt = make_config(optimizer__schedule=schedule, optimizer__learning_rate=1.0, optimizer__warmup_steps=10,
                    optimizer__end_lr_ratio=0.1).optimizer
  lr = learning_rate_schedule(opt, 110)
  np.testing.assert_allclose(float(lr(0)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(lr(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 1.0, rtol=1e-6)
  expected_mid = {"cosine": 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)), "linear": 0.55, "constant": 1.0}[schedule]
  np.testing.assert_allclose(float(lr(60)), expected_mid, rtol=1e-5)
  np.testing.assert_allclose(float(lr(110)), {"constant": 1.0}.get(schedule, 0.1), rtol=1e-5)


def test_unknown_objective_is_named(make_config):
  from polyglot_jax.configs import ConfigError
  from polyglot_jax.objectives import make_objective
  with pytest.raises(ConfigError, match=r"config.objective='dpo_typo' is unknown; registered objectives: \[.*'lm'"):
    make_objective(make_config(objective="dpo_typo"), 3)
