"""The optimizer options: embedding decay, first-moment dtype, float32 master weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax.errors import ConfigError
from polyglot_jax.train.optimizer import MasterWeightsState, decay_mask, make_optimizer, with_master_weights

TREE = {"embedding": 0, "lm_head": 0, "final_norm": {"scale": 0},
        "blocks": {"attn": {"q_proj": 0, "q_bias": 0}, "attn_norm": {"scale": 0}}}


def opt_config(**fields):
  """config.optimizer from the real defaults, with the given fields set."""
  opt = config_lib.default_config().optimizer
  for key, value in fields.items():
    setattr(opt, key, value)
  return opt


def small_params(dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"embedding": (16, 8), "lm_head": (8, 16), "final_norm": {"scale": (8,)},
            "blocks": {"mlp": {"w_in": (8, 32), "w_in_bias": (32,)}}}
  # Magnitudes around 1 so that a 1e-3 step is below half a bf16 ulp (2^-8 at 1).
  return jax.tree.map(lambda s: jnp.asarray(1.0 + rng.uniform(-0.5, 0.5, s), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def run(optimizer, params, grads_seq):
  """Applies the optimizer to the given gradient sequence; returns (params, state)."""
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, grads):
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grads_seq:
    params, state = step(params, state, grads)
  return params, state


def random_grads(params, steps, seed=1):
  # bf16-representable values, so a bf16 run (whose gradients are bf16) sees the same ones.
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.bfloat16).astype(jnp.float32), params)
          for _ in range(steps)]


def adam_mu(state):
  """The (masked-out-free) ScaleByAdamState.mu tree inside an optimizer state."""
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0].mu


# (a) weight-decay mask --------------------------------------------------------


def test_decay_mask_default_decays_embeddings():
  assert decay_mask(TREE) == {"embedding": True, "lm_head": True, "final_norm": {"scale": False},
                              "blocks": {"attn": {"q_proj": True, "q_bias": False}, "attn_norm": {"scale": False}}}


def test_decay_mask_can_spare_embeddings():
  assert decay_mask(TREE, decay_embeddings=False) == {
      "embedding": False, "lm_head": False, "final_norm": {"scale": False},
      "blocks": {"attn": {"q_proj": True, "q_bias": False}, "attn_norm": {"scale": False}}}
  # Only the top-level names: a nested leaf that happens to be called embedding is a matrix.
  assert decay_mask({"adapter": {"embedding": 0}}, decay_embeddings=False) == {"adapter": {"embedding": True}}


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_optimizer_decays_embeddings_only_when_asked(decay_embeddings):
  # Zero gradients: Adam's step is 0, so the only change is decoupled decay p *= 1 - lr * wd.
  opt = opt_config(decay_embeddings=decay_embeddings, schedule="constant", warmup_steps=0,
                   learning_rate=0.1, weight_decay=0.5)
  params = small_params(jnp.float32)
  zeros = [jax.tree.map(jnp.zeros_like, params)]
  new, _ = run(make_optimizer(opt, 10), params, zeros)
  shrink = 1 - 0.1 * 0.5
  np.testing.assert_allclose(new["blocks"]["mlp"]["w_in"], params["blocks"]["mlp"]["w_in"] * shrink, rtol=1e-6)
  np.testing.assert_array_equal(new["final_norm"]["scale"], params["final_norm"]["scale"])
  np.testing.assert_array_equal(new["blocks"]["mlp"]["w_in_bias"], params["blocks"]["mlp"]["w_in_bias"])
  for name in ("embedding", "lm_head"):
    expected = params[name] * shrink if decay_embeddings else params[name]
    np.testing.assert_allclose(new[name], expected, rtol=1e-6)


# Default settings are the plain chain ---------------------------------------------


def test_default_optimizer_is_the_plain_clip_adamw_chain():
  opt = opt_config(warmup_steps=2)
  assert (opt.decay_embeddings, opt.mu_dtype, opt.master_dtype) == (True, "", "")
  from polyglot_jax.train.optimizer import learning_rate_schedule
  plain = optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                      optax.adamw(learning_rate_schedule(opt, 6), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                  weight_decay=opt.weight_decay, mask=decay_mask))
  params = small_params(jnp.float32)
  grads = random_grads(params, 6)
  ours, our_state = run(make_optimizer(opt, 6), params, grads)
  theirs, their_state = run(plain, params, grads)
  assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
  jax.tree.map(np.testing.assert_array_equal, (ours, our_state), (theirs, their_state))


# (b) mu_dtype ------------------------------------------------------------------------


@pytest.mark.parametrize("mu_dtype, expected", [("", jnp.bfloat16), ("float32", jnp.float32)])
def test_mu_dtype_sets_first_moment_dtype(mu_dtype, expected):
  params = small_params(jnp.bfloat16)
  _, state = run(make_optimizer(opt_config(mu_dtype=mu_dtype), 10), params, random_grads(params, 2))
  mu = jax.tree.leaves(adam_mu(state))
  assert len(mu) == len(jax.tree.leaves(params))
  assert {leaf.dtype for leaf in mu} == {jnp.dtype(expected)}


@pytest.mark.parametrize("key, value", [("mu_dtype", "float23"), ("mu_dtype", "int32"),
                                        ("master_dtype", "bfloat16"), ("master_dtype", "nonsense")])
def test_bad_dtype_names_the_key(key, value):
  with pytest.raises(ConfigError, match=f"config.optimizer.{key}='{value}'"):
    make_optimizer(opt_config(**{key: value}), 10)


# (c) master weights --------------------------------------------------------------------


def master_opt(**fields):
  # A constant 1e-3 learning rate: every step is below half a bf16 ulp of ~1-valued weights.
  return opt_config(schedule="constant", warmup_steps=0, learning_rate=1e-3, **fields)


def test_master_weights_track_float32_reference():
  steps = 20
  params32 = small_params(jnp.float32)
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params32)
  # The reference starts from the same (bf16-representable) values and sees the same gradients.
  params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params16)
  grads = random_grads(params32, steps)

  reference, _ = run(make_optimizer(master_opt(), steps), params32, grads)
  with_master, state = run(make_optimizer(master_opt(master_dtype="float32"), steps), params16, grads)
  without, _ = run(make_optimizer(master_opt(mu_dtype="float32"), steps), params16, grads)

  assert isinstance(state, MasterWeightsState)
  master = state.master
  assert {leaf.dtype for leaf in jax.tree.leaves(master)} == {jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in jax.tree.leaves(with_master)} == {jnp.dtype(jnp.bfloat16)}
  # Moments follow the master copy (float32) even with mu_dtype "".
  assert {leaf.dtype for leaf in jax.tree.leaves(adam_mu(state))} == {jnp.dtype(jnp.float32)}

  flat = lambda tree: np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])
  ref, mst = flat(reference), flat(master)
  moved = np.abs(ref - flat(params32))
  assert moved.max() > 1e-2  # 20 steps of 1e-3 did move the reference
  np.testing.assert_allclose(mst, ref, rtol=0, atol=1e-6)
  # The bf16 parameters are exactly the master copy (and the reference) rounded to bf16.
  np.testing.assert_array_equal(flat(with_master), flat(jax.tree.map(lambda m: m.astype(jnp.bfloat16), master)))
  rounded_ref = flat(jax.tree.map(lambda r: r.astype(jnp.bfloat16), reference))
  np.testing.assert_array_equal(flat(with_master), rounded_ref)
  # Without a master copy the 1e-3 steps are lost to bf16 rounding: the parameters drift away
  # from the reference by a large part of the distance the reference moved.
  drift = np.abs(flat(without) - rounded_ref)
  assert drift.max() > 1e-2
  assert np.mean(flat(without) != rounded_ref) > 0.5
  assert np.mean(flat(without) == flat(params16)) > 0.9  # most weights never moved at all


def test_master_weights_hand_back_is_exact():
  # Identity inner transform: the new master is master + grads, chosen here directly.
  rng = np.random.default_rng(3)
  n = 200_000
  scale = 10.0 ** rng.uniform(-6, 2, n)
  old = jnp.asarray(rng.normal(size=n) * scale, jnp.bfloat16)
  # Relative steps from tiny to 10x (so sign flips are included), all within the exact range.
  step = rng.normal(size=n) * 10.0 ** rng.uniform(-8, 1, n) * np.abs(np.asarray(old, np.float32))
  opt = with_master_weights(optax.identity())
  state = opt.init(old)
  updates, state = jax.jit(opt.update)(jnp.asarray(step, jnp.bfloat16).astype(jnp.float32), state, old)
  assert updates.dtype == jnp.float32
  new = jax.jit(optax.apply_updates)(old, updates)
  target = state.master.astype(jnp.bfloat16)
  big_shrink = np.abs(np.asarray(old, np.float32)) > 2.0 ** 15 * np.abs(np.asarray(target, np.float32))
  assert big_shrink.mean() < 1e-3  # almost all samples are in the range where exactness is claimed
  np.testing.assert_array_equal(np.asarray(new, np.float32)[~big_shrink], np.asarray(target, np.float32)[~big_shrink])

  # Masters a hair above a bf16 rounding midpoint, a step below parameters at +-1: handing back
  # master - param would round twice (to the midpoint in float32, then to even in bf16).
  params = jnp.asarray([1.0, -1.0], jnp.bfloat16)
  master = jnp.asarray([0.3125 + 2.0 ** -10 + 2.0 ** -25, -0.3125 + 2.0 ** -10 + 2.0 ** -25], jnp.float32)
  state = MasterWeightsState(master=master, inner_state=optax.identity().init(master))
  updates, _ = opt.update(jnp.zeros(2, jnp.float32), state, params)
  np.testing.assert_array_equal(np.asarray(optax.apply_updates(params, updates), np.float32),
                                [0.3125 + 2.0 ** -9, -0.3125 + 2.0 ** -9])


def test_master_state_maps_like_params():
  # What the trainer does to derive optimizer-state shardings from parameter shardings.
  params = small_params(jnp.bfloat16)
  opt = make_optimizer(master_opt(master_dtype="float32"), 10)
  state = opt.init(params)
  names = jax.tree_util.tree_map_with_path(lambda p, _: "/".join(str(k.key) for k in p), params)
  mapped = optax.tree_map_params(opt, lambda _, name: name, state, names,
                                 transform_non_params=lambda _: "replicated")
  assert mapped.master == names
  assert adam_mu(mapped.inner_state) == names
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
