"""LAPE on mixture-of-experts models: per-expert neuron counts against NumPy, expert neurons switched off.

In an MoE layer the unit is (expert, neuron), numbered ``expert · mlp_dim + neuron`` (then the shared
experts' neurons); a routed expert's neuron counts only the tokens routed to that expert.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyglot_jax import decode
from polyglot_jax.analysis import lape
from polyglot_jax.models.config import ModelConfig

import reference
from test_analysis import forward, params_np, random_decoder

N, K, F = 4, 2, 8  # Experts, experts per token, neurons per expert (mlp_dim).
VARIANTS = {
    # Both layers MoE, stacked and scanned.
    "scan_moe": dict(scan_layers=True, moe_layers="all"),
    # Layer 0 dense, layer 1 MoE with one shared expert: widths 8 and 4·8 + 8.
    "mixed_shared": dict(scan_layers=False, moe_layers="1", moe_shared_experts=1),
}
WIDTHS = {"scan_moe": [N * F, N * F], "mixed_shared": [F, N * F + F]}


@functools.cache
def _base_model(variant):
  cfg = ModelConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=0, mlp_dim=F,
                    init_std=0.2, attention_block=0, num_experts=N, moe_top_k=K, **VARIANTS[variant])
  return cfg, random_decoder(cfg, 0.3)


def make_model(variant):
  cfg, model = _base_model(variant)
  return cfg, nnx.clone(model)


def _silu(x):
  return x / (1 + np.exp(-x))


def reference_counts(params, cfg, tokens):
  """NumPy float64 replay of one unpadded row with top-k routing: per layer (active [W], seen [W]).

  Also returns the smallest gap between a token's k-th and (k+1)-th router probability, so that the
  test can tell a routing tie (float32 vs float64) from a bug.
  """
  p = reference._to64(params)
  length = len(tokens)
  positions = np.arange(length)[None]
  x = p["embedding"][np.asarray(tokens)][None]
  counts, gap = [], np.inf
  for i in range(cfg.num_layers):
    layer = reference._layer(p["blocks"], i, cfg.scan_layers)
    x = reference.attention_residual(x, layer, cfg, positions)
    y = reference.rms_norm(x, layer["mlp_norm"]["scale"], cfg.norm_eps)[0]  # [T, E]
    if "moe" in layer:
      m = layer["moe"]
      logits = y @ m["router"]
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      order = np.argsort(-probs, axis=-1)
      ranked = np.take_along_axis(probs, order, -1)
      gap = min(gap, float((ranked[:, K - 1] - ranked[:, K]).min()))
      top = order[:, :K]
      weights = np.take_along_axis(probs, top, -1)
      weights /= weights.sum(-1, keepdims=True)
      ffn = np.zeros_like(y)
      active, seen = [], []
      for j in range(N):
        routed = (top == j).any(-1)
        gate = y @ m["gate_proj"][j]
        w_j = (weights * (top == j)).sum(-1)[:, None]
        ffn += w_j * ((_silu(gate) * (y @ m["up_proj"][j])) @ m["down_proj"][j])
        active.append(((gate > 0) & routed[:, None]).sum(0))
        seen.append(np.full(F, routed.sum()))
      if "shared" in m:
        gate = y @ m["shared"]["gate_proj"]
        ffn += (_silu(gate) * (y @ m["shared"]["up_proj"])) @ m["shared"]["down_proj"]
        active.append((gate > 0).sum(0))
        seen.append(np.full(gate.shape[-1], length))
      counts.append((np.concatenate(active), np.concatenate(seen)))
    else:
      m = layer["mlp"]
      gate = y @ m["gate_proj"]
      ffn = (_silu(gate) * (y @ m["up_proj"])) @ m["down_proj"]
      counts.append(((gate > 0).sum(0), np.full(gate.shape[-1], length)))
    x = x + ffn[None]
  return counts, gap


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_expert_neuron_counts_match_numpy(variant):
  cfg, model = make_model(variant)
  assert lape.layer_widths(model) == WIDTHS[variant]
  rng = np.random.default_rng(1)
  # The 40-token text is cut into windows of 16, 16 and 8 tokens; each is its own sequence.
  texts = {"a": [rng.integers(1, 64, n).tolist() for n in (5, 40, 9)],
           "b": [rng.integers(1, 64, n).tolist() for n in (12, 3)]}
  langs, active, seen = lape.activation_counts(model, texts, batch_size=2, seq_len=16)
  width = max(WIDTHS[variant])
  assert langs == ["a", "b"] and active.shape == seen.shape == (2, 2, width)
  params = params_np(model)
  for n, lang in enumerate(langs):
    windows = [seq[i:i + 16] for seq in texts[lang] for i in range(0, len(seq), 16)]
    per_window = [reference_counts(params, cfg, w) for w in windows]
    assert min(gap for _, gap in per_window) > 1e-4  # No routing decision is a float32 coin toss.
    for layer, w in enumerate(WIDTHS[variant]):
      want_active = sum(c[layer][0] for c, _ in per_window)
      want_seen = sum(c[layer][1] for c, _ in per_window)
      # Tokens routed to each expert: exact. Active tokens: a gate within float32 rounding of 0 may
      # land on either side, so one token either way.
      np.testing.assert_array_equal(seen[n, layer, :w], want_seen, err_msg=f"{lang} layer {layer}")
      np.testing.assert_allclose(active[n, layer, :w], want_active, atol=1, err_msg=f"{lang} layer {layer}")
      assert not active[n, layer, w:].any() and not seen[n, layer, w:].any()  # Padding.
    # Every real token goes to exactly K experts of an MoE layer.
    num_tokens = sum(len(w) for w in windows)
    for layer in cfg.moe_layer_ids():
      assert seen[n, layer, :N * F:F].sum() == K * num_tokens
  # Probabilities: active / seen per neuron, NaN on padding only.
  _, probs = lape.activation_probabilities(model, texts, batch_size=2, seq_len=16)
  for layer, w in enumerate(WIDTHS[variant]):
    a, s = active[:, layer, :w], seen[:, layer, :w]
    np.testing.assert_array_equal(probs[:, layer, :w], np.where(s > 0, a / np.maximum(s, 1), 0.0))
    assert np.isnan(probs[:, layer, w:]).all()
  moe_probs = probs[:, list(cfg.moe_layer_ids()), :N * F]
  assert 0.2 < moe_probs.mean() < 0.8 and (moe_probs > 0).any() and (moe_probs < 1).any()


def _zeroed(model, cfg, neurons):
  """A copy with the down_proj rows of ``neurons`` (flat per-layer indices) set to zero: the reference."""
  pure = params_np(model)
  for layer, idx in neurons.items():
    blocks = pure["blocks"]
    sel = (lambda a: a[layer]) if cfg.scan_layers else (lambda a: a)
    block = blocks if cfg.scan_layers else blocks[layer]
    for i in idx:
      if "mlp" in block:
        sel(block["mlp"]["down_proj"])[i] = 0.0
      elif i < N * F:
        sel(block["moe"]["down_proj"])[i // F, i % F] = 0.0
      else:
        sel(block["moe"]["shared"]["down_proj"])[i - N * F] = 0.0
  copy = nnx.clone(model)
  state = nnx.state(copy, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  nnx.update(copy, state)
  return copy


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deactivating_expert_neurons_zeroes_what_they_write(variant):
  cfg, model = make_model(variant)
  moe_layer = 1
  # Expert 1 neuron 3, expert 3 neuron 0 (and shared neuron 2); in the mixed model also dense neuron 5 of layer 0.
  neurons = {moe_layer: [1 * F + 3, 3 * F + 0] + ([N * F + 2] if cfg.moe_shared_experts else [])}
  neurons[0] = [2 * F + 6] if cfg.scan_layers else [5]
  tokens = np.arange(3, 27).reshape(2, 12) * 5 % 64
  before = forward(model, tokens)
  down_before = params_np(model)
  off = lape.deactivate(model, neurons)
  got = forward(off, tokens)
  np.testing.assert_allclose(got, forward(_zeroed(model, cfg, neurons), tokens), atol=1e-6)
  assert np.abs(got - before).max() > 1e-4
  # The caller's model: same logits, same parameters, no mask.
  np.testing.assert_array_equal(forward(model, tokens), before)
  jax.tree.map(np.testing.assert_array_equal, params_np(model), down_before)
  assert not nnx.state(model, lape.NeuronMask)
  # The recorded multipliers: zeros at the neurons, NaN past layer 0's width in the mixed model.
  expected = np.ones((2, max(WIDTHS[variant])), np.float32)
  expected[0, WIDTHS[variant][0]:] = np.nan
  for layer, idx in neurons.items():
    expected[layer, idx] = 0.0
  np.testing.assert_array_equal(lape.neuron_mask(off), expected)
  # Again on the copy: the earlier zeros stay.
  more = {moe_layer: [2 * F + 1]}
  twice = lape.deactivate(off, more)
  both = {layer: neurons[layer] + more.get(layer, []) for layer in neurons}
  np.testing.assert_allclose(forward(twice, tokens), forward(_zeroed(model, cfg, both), tokens), atol=1e-6)
  assert lape.neuron_mask(twice)[moe_layer, 1 * F + 3] == 0.0 and lape.neuron_mask(twice)[moe_layer, 2 * F + 1] == 0.0
  with pytest.raises(ValueError, match=rf"layer 1 names neurons outside \[0, {WIDTHS[variant][1]}\) \(num_experts"):
    lape.deactivate(model, {1: [WIDTHS[variant][1]]})
  if variant == "scan_moe":
    # Generation with the deactivated copy against a greedy recompute of the reference.
    seq = [5, 17, 30]
    new = decode.generate(off, [seq], 3)[0]
    zeroed = _zeroed(model, cfg, neurons)
    for _ in range(3):
      seq.append(int(np.argmax(forward(zeroed, [seq])[0, -1])))
    assert new == seq[3:]


def test_select_neurons_skips_the_padding_of_narrower_layers():
  """A padded [langs, layers, max width] array selects what the same neurons laid out flat select."""
  rng = np.random.default_rng(3)
  widths = [10, 40]  # A dense layer and a wider MoE layer.
  flat = rng.beta(0.5, 2.0, size=(3, 1, sum(widths)))
  flat[:, 0, :2] = 0.0  # Dead neurons.
  padded = np.full((3, 2, 40), np.nan)
  padded[:, 0, :10], padded[:, 1, :] = flat[:, 0, :10], flat[:, 0, 10:]
  for top_rate, filter_rate, bar in ((0.05, 0.9, 0.8), (0.1, 0.5, 0.9)):
    got = lape.select_neurons(padded, ["x", "y", "z"], top_rate=top_rate, filter_rate=filter_rate,
                              activation_bar_ratio=bar)
    want = lape.select_neurons(flat, ["x", "y", "z"], top_rate=top_rate, filter_rate=filter_rate,
                               activation_bar_ratio=bar)
    unflat = {lang: {} for lang in want}
    for lang, by_layer in want.items():
      for i in by_layer.get(0, []):
        layer, neuron = (0, i) if i < 10 else (1, i - 10)
        unflat[lang].setdefault(layer, []).append(neuron)
    assert got == unflat and any(got.values())
  entropy = lape.lape_entropy(padded)
  assert np.isnan(entropy[0, 10:]).all() and np.isfinite(entropy[0, :10]).all() and np.isfinite(entropy[1]).all()


def test_random_control_draws_within_each_layers_width():
  rng = np.random.default_rng(0)
  drawn = lape.random_like({0: [1, 2, 3], 1: [4, 5], 2: []}, [4, 40, 4], rng)
  assert set(drawn) == {0, 1} and len(drawn[0]) == 3 and len(drawn[1]) == 2
  assert max(drawn[0]) < 4 and len(set(drawn[1])) == 2 and max(drawn[1]) < 40
  # One width for every layer draws exactly as the per-layer list of it does.
  neurons = {0: [1, 2], 1: [7]}
  assert lape.random_like(neurons, 64, np.random.default_rng(5)) == \
      lape.random_like(neurons, [64, 64], np.random.default_rng(5))
