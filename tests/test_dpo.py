"""The DPO objective: every loss type against NumPy, the frozen reference, precomputed references, training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError
import inspect

from polyglot_jax.objectives.dpo import LOSS_TYPES, SIMPO_GAMMA, preference_loss, preference_loss_with_margin

# ---- The formulas, in NumPy (TRL's DPOTrainer / CPOTrainer / ORPOTrainer).


def _logsig(x):
  return -np.logaddexp(0.0, -x)


def numpy_preference_loss(pc, pr, rc, rr, loss_type, beta, eps, nc, nr, gamma):
  """float64 reference of every loss type: (losses, chosen rewards, rejected rewards)."""
  if loss_type in ("ipo", "simpo", "orpo"):
    pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
  if loss_type == "simpo":
    z = beta * (pc - pr) - gamma
    return -(1 - eps) * _logsig(z) - eps * _logsig(-z), beta * pc, beta * pr
  if loss_type == "orpo":
    log_odds = (pc - pr) - (np.log1p(-np.exp(pc)) - np.log1p(-np.exp(pr)))
    return -pc - beta * _logsig(log_odds), beta * pc, beta * pr
  h = (pc - pr) - (rc - rr)
  losses = {
      "sigmoid": -(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h),
      "robust": (-(1 - eps) * _logsig(beta * h) + eps * _logsig(-beta * h)) / (1 - 2 * eps),
      "hinge": np.maximum(0.0, 1 - beta * h),
      "ipo": (h - 1 / (2 * beta)) ** 2,
  }[loss_type]
  return losses, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_preference_loss_matches_numpy(loss_type, eps):
  rng = np.random.default_rng(LOSS_TYPES.index(loss_type))
  n = 64
  nc, nr = rng.integers(1, 40, n).astype(np.float64), rng.integers(1, 40, n).astype(np.float64)
  pc, pr = -nc * rng.uniform(0.05, 4.0, n), -nr * rng.uniform(0.05, 4.0, n)
  rc, rr = pc + rng.normal(0, 3, n), pr + rng.normal(0, 3, n)
  beta, gamma = 0.3, 0.7
  got = preference_loss_with_margin(*(np.float32(x) for x in (pc, pr, rc, rr)), loss_type=loss_type, beta=beta,
                                    label_smoothing=eps, chosen_lengths=nc, rejected_lengths=nr, simpo_gamma=gamma)
  want = numpy_preference_loss(pc, pr, rc, rr, loss_type, beta, eps, nc, nr, gamma)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-5)
  # The public function as written: SimPO's margin is SIMPO_GAMMA.
  plain = preference_loss(*(np.float32(x) for x in (pc, pr, rc, rr)), loss_type=loss_type, beta=beta,
                          label_smoothing=eps, chosen_lengths=nc, rejected_lengths=nr)
  want = numpy_preference_loss(pc, pr, rc, rr, loss_type, beta, eps, nc, nr, SIMPO_GAMMA)
  for g, w in zip(plain, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-5)
  # Reference-free types ignore the reference.
  if loss_type in ("simpo", "orpo"):
    again = preference_loss_with_margin(np.float32(pc), np.float32(pr), None, None, loss_type=loss_type, beta=beta,
                                        label_smoothing=eps, chosen_lengths=nc, rejected_lengths=nr, simpo_gamma=gamma)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(got[0]))


def test_preference_loss_signature_as_written():
  params = inspect.signature(preference_loss).parameters
  assert list(params) == ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                          "loss_type", "beta", "label_smoothing", "chosen_lengths", "rejected_lengths"]
  assert [p.default for p in params.values()][6:] == [0.0, None, None]
  assert all(params[k].kind == inspect.Parameter.KEYWORD_ONLY for k in list(params)[4:])


def test_preference_loss_edge_cases():
  # Policy == reference: sigmoid DPO is log 2 with zero rewards; IPO is 1/(4β²).
  x = jnp.asarray([-3.0, -10.0])
  loss, rc, rr = preference_loss(x, x - 1, x, x - 1, loss_type="sigmoid", beta=0.1)
  np.testing.assert_allclose(np.asarray(loss), np.log(2.0), rtol=1e-6)
  assert not np.asarray(rc).any() and not np.asarray(rr).any()
  loss, _, _ = preference_loss(x, x, x, x, loss_type="ipo", beta=0.5, chosen_lengths=[1, 2], rejected_lengths=[3, 4])
  np.testing.assert_allclose(np.asarray(loss), 1.0, rtol=1e-6)
  # ORPO stays finite (and its gradient too) for log-probs just below 0, where log1p(-exp(x)) is -inf in float32.
  near0 = jnp.asarray([-1e-9, -1e-3])
  grad = jax.grad(lambda p: preference_loss(p, jnp.asarray([-2.0, -2.0]), None, None, loss_type="orpo", beta=0.1,
                                            chosen_lengths=[1, 1], rejected_lengths=[1, 1])[0].sum())(near0)
  assert np.isfinite(np.asarray(grad)).all()
  with pytest.raises(ValueError, match="chosen_lengths"):
    preference_loss(x, x, x, x, loss_type="ipo", beta=0.1)
  with pytest.raises(ValueError, match="loss_type='dpo'"):
    preference_loss(x, x, x, x, loss_type="dpo", beta=0.1)


# ---- The objective on a tiny model.

PAIRS = [("What is two plus two?", "Four.", "Five, or maybe six.", "eng"),
         ("Say hello in French.", "Bonjour.", "Hello.", "eng"),
         ("Quelle est la capitale de la France ?", "Paris.", "Rome, bien sûr.", "fra"),
         ("Traduis : thank you.", "Merci.", "Bonjour.", "fra")]


def write_pairs(path, refs=None):
  with open(path, "w") as f:
    for i, (prompt, chosen, rejected, lang) in enumerate(PAIRS * 4):
      record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "lang": lang}
      if refs is not None and refs[i % len(PAIRS)] is not None:
        record.update(ref_logp_chosen=refs[i % len(PAIRS)][0], ref_logp_rejected=refs[i % len(PAIRS)][1])
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def dpo_config(make_config, path, **kw):
  values = dict(objective="dpo", data__kind="preference", data__train_files=(str(path),),
                data__eval_files=(str(path),), model__init_std=0.2)
  values.update(kw)
  return make_config(**values)


def first_batch(config, workdir):
  from polyglot_jax.data.backends import make_data
  data = make_data(config, workdir)
  return {k: np.asarray(v) for k, v in next(iter(data.train)).items()}, data.languages


def test_config_section_and_validation(make_config, tmp_path):
  from polyglot_jax.objectives import make_objective
  path = tmp_path / "p.jsonl"
  config = dpo_config(make_config, path)
  assert (config.dpo.loss_type, config.dpo.beta, config.dpo.reference) == ("sigmoid", 0.1, "policy")
  assert config.dpo.label_smoothing == 0.0 and config.dpo.simpo_gamma == 0.5 and config.dpo.rpo_alpha == 0.0
  with pytest.raises(ConfigError, match=r"config.dpo.loss_type='kto' is unknown; use one of \['sigmoid'"):
    make_objective(dpo_config(make_config, path, dpo__loss_type="kto"), 2)
  with pytest.raises(ConfigError, match=r"config.dpo.reference='frozen' is unknown; use one of \['policy'"):
    make_objective(dpo_config(make_config, path, dpo__reference="frozen"), 2)
  with pytest.raises(ConfigError, match=r"config.dpo.reference='none' but config.dpo.loss_type='ipo' needs"):
    make_objective(dpo_config(make_config, path, dpo__reference="none", dpo__loss_type="ipo"), 2)
  # Reference-free losses make no reference copy and read no precomputed values.
  simpo = make_objective(dpo_config(make_config, path, dpo__loss_type="simpo"), 2)
  assert simpo.init_extra({"w": jnp.ones(2)}) is None and "has_ref_logp" not in simpo.batch_spec()
  pre = make_objective(dpo_config(make_config, path, dpo__reference="precomputed"), 2)
  assert "has_ref_logp" in pre.batch_spec() and "missing_ref_logp" in pre.metrics
  from conftest import REPO

  from polyglot_jax import configs as config_lib
  demo = config_lib.load_config(f"{REPO}/configs/dpo_demo.py", ["data.train_files=prefs.jsonl"])
  assert demo.objective == "dpo" and demo.data.kind == "preference" and demo.data.train_files == ("prefs.jsonl",)
  assert make_objective(demo, 2).reference == "policy"


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
  """A few DPO steps with a frozen-policy reference through the real trainer."""
  from conftest import tiny_config

  from polyglot_jax.train.build import build
  from polyglot_jax.train.trainer import train_and_evaluate
  root = tmp_path_factory.mktemp("dpo")
  path = root / "pairs.jsonl"
  write_pairs(path)
  config = tiny_config(demo_data, objective="dpo", data__kind="preference", data__train_files=(str(path),),
                       data__eval_files=(), model__init_std=0.2, dpo__beta=0.5,
                       optimizer__learning_rate=1e-2, optimizer__warmup_steps=1, train__num_steps=6,
                       train__log_every_steps=1, checkpoint__every_steps=0)
  summary = train_and_evaluate(config, str(root / "run"))
  rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
  # The starting parameters, made again on one device (random init does not depend on the sharding).
  setup = build(config, 2, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  params0 = jax.device_get(setup.init_fn().params)
  return {"config": config, "summary": summary, "rows": rows, "params0": params0, "setup": setup, "root": root,
          "path": path}


def test_policy_reference_is_frozen_sharded_like_the_policy_and_training_improves(trained):
  state = trained["summary"]["state"]
  reference = state.extra["reference"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(reference), trained["params0"])
  assert jax.tree.structure(reference) == jax.tree.structure(state.params)
  for ref_leaf, leaf in zip(jax.tree.leaves(reference), jax.tree.leaves(state.params)):
    assert ref_leaf.sharding == leaf.sharding
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.params), trained["params0"])
  assert any(jax.tree.leaves(moved))
  rows = trained["rows"]
  first, last = rows[0], rows[-1]
  # Step 1 computed with policy == reference: loss log 2, zero rewards, no pair "won".
  np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=1e-5)
  for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
    assert abs(first[key]) < 1e-5, (key, first[key])
  for lang in ("eng", "fra"):
    np.testing.assert_allclose(first[f"loss/{lang}"], np.log(2.0), rtol=1e-5)
    assert f"rewards/accuracies/{lang}" in last and f"logps/chosen/{lang}" in last
  assert first["pairs"] == 8.0 and first["logps/chosen"] < 0 and first["logps/rejected"] < 0
  assert last["loss"] < first["loss"] - 0.05 and last["rewards/accuracies"] > 0.5 and last["rewards/margins"] > 0
  np.testing.assert_allclose(last["rewards/margins"], last["rewards/chosen"] - last["rewards/rejected"], rtol=1e-5)


def _pair_tokens(tok, prompt, response):
  """What the preference kind trains: BOS + prompt + response + EOS, and the prompt length (with BOS)."""
  p = [tok.bos_id()] + tok.encode(prompt)
  return p + tok.encode(response) + [tok.eos_id()], len(p)


def test_precomputed_reference_logps_equal_the_live_reference(trained, make_config):
  import sentencepiece
  from flax import nnx

  from polyglot_jax.decode.generate import score
  from polyglot_jax.train.build import build, global_batch
  config = trained["config"]
  tok = sentencepiece.SentencePieceProcessor(model_file=config.data.tokenizer)
  setup = trained["setup"]
  one = setup.mesh
  model0 = nnx.merge(setup.graphdef, jax.tree.map(jnp.asarray, trained["params0"]))
  refs = []
  for prompt, chosen, rejected, _ in PAIRS:
    seqs = [_pair_tokens(tok, prompt, r) for r in (chosen, rejected)]
    logps = score(model0, [s for s, _ in seqs], [n for _, n in seqs])
    refs.append([float(v.sum()) for v in logps])
  root = trained["root"]
  path = root / "pairs_ref.jsonl"
  write_pairs(path, refs)
  pre_config = dpo_config(make_config, path, dpo__reference="precomputed", dpo__beta=0.5)
  batch, languages = first_batch(pre_config, str(root / "pre"))
  assert (batch["has_ref_logp"] == 1).all()
  pre = build(pre_config, len(languages), mesh=one)
  params0 = trained["params0"]
  params1 = jax.device_get(trained["summary"]["state"].params)

  def live_sums(params, b):
    return jax.device_get(setup.eval_step(params, {"reference": params0}, global_batch(setup, b)))

  def pre_sums(params, b):
    return jax.device_get(pre.eval_step(params, None, global_batch(pre, b)))

  # The trained policy against the starting model as reference, live and precomputed: same loss.
  o_live, o_pre = live_sums(params1, batch), pre_sums(params1, batch)
  assert o_live["pairs"] == o_pre["pairs"] == 8.0 and o_pre["missing_ref_logp"] == 0
  assert abs(o_live["loss_sum"] / 8 - np.log(2.0)) > 1e-3  # The policy moved: not the trivial log 2.
  np.testing.assert_allclose(o_pre["loss_sum"] / 8, o_live["loss_sum"] / 8, atol=1e-5)
  for key in ("chosen_reward_sum", "rejected_reward_sum", "margin_sum", "lang_loss_sum"):
    np.testing.assert_allclose(o_pre[key], o_live[key], atol=1e-4)
  # At the start, precomputed == policy: log 2 and zero rewards, so score() saw exactly the trained tokens.
  o0 = pre_sums(params0, batch)
  np.testing.assert_allclose(o0["loss_sum"] / 8, np.log(2.0), atol=1e-5)
  np.testing.assert_allclose([o0["chosen_reward_sum"], o0["rejected_reward_sum"]], 0.0, atol=1e-4)

  # Records without reference log-probs are rejected and counted when the data is read.
  partial = root / "pairs_partial.jsonl"
  write_pairs(partial, [refs[0], None, refs[2], refs[3]])
  from polyglot_jax.data.backends import make_data
  data = make_data(dpo_config(make_config, partial, dpo__reference="precomputed"), str(root / "partial"))
  reasons = {reason: n for reason, n in data.rejected.items() if "ref_logp_chosen" in reason}
  # 4 of 16 lines lack them, read twice (the file is both the train and the eval file).
  assert list(reasons.values()) == [8] and "polyglot-jax score" in next(iter(reasons)), data.rejected
  # As a backstop, a pair that reaches the step without them is never scored against 0: NaN loss, counted.
  o_missing = pre_sums(params1, dict(batch, has_ref_logp=np.where(np.arange(8) == 3, 0, 1).astype(np.int32)))
  assert np.isnan(o_missing["loss_sum"]) and o_missing["missing_ref_logp"] == 1.0


def _numpy_completion_logps(model, batch, side):
  """float64 completion log-prob sums and lengths of one side, from the model's logits."""
  logits = np.asarray(model(jnp.asarray(batch[f"{side}_inputs"]), jnp.asarray(batch[f"{side}_segment_ids"]),
                            jnp.asarray(batch[f"{side}_positions"])), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  token = np.take_along_axis(logp, batch[f"{side}_targets"][..., None], -1)[..., 0]
  w = batch[f"{side}_loss_weights"].astype(np.float64)
  return (token * w).sum(1), w.sum(1)


@pytest.mark.parametrize("loss_type,eps,rpo_alpha", [("sigmoid", 0.1, 0.5), ("robust", 0.2, 0.0),
                                                     ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0),
                                                     ("simpo", 0.1, 0.0), ("orpo", 0.0, 0.3)])
def test_objective_outputs_match_numpy(trained, make_config, loss_type, eps, rpo_alpha):
  from flax import nnx

  from polyglot_jax.objectives import make_objective
  from polyglot_jax.objectives.base import StepContext
  setup = trained["setup"]
  if "batch" not in trained:
    batch, languages = first_batch(trained["config"], str(trained["root"] / "np"))
    batch["chosen_loss_weights"][7] = 0  # A pair with nothing to learn (all prompt): not counted.
    batch["rejected_loss_weights"][7] = 0
    trained["batch"], trained["languages"] = batch, languages
    trained["model1"] = nnx.merge(setup.graphdef,
                                  jax.tree.map(jnp.asarray, jax.device_get(trained["summary"]["state"].params)))
    model0 = nnx.merge(setup.graphdef, jax.tree.map(jnp.asarray, trained["params0"]))
    trained["numpy_logps"] = {(m, side): _numpy_completion_logps(model, batch, side)
                              for m, model in (("policy", trained["model1"]), ("ref", model0))
                              for side in ("chosen", "rejected")}
  batch, languages, logps = trained["batch"], trained["languages"], trained["numpy_logps"]
  config = dpo_config(make_config, trained["path"], dpo__loss_type=loss_type, dpo__label_smoothing=eps,
                      dpo__rpo_alpha=rpo_alpha, dpo__beta=0.5, dpo__simpo_gamma=0.3)
  objective = make_objective(config, len(languages))
  ctx = StepContext(rng=jax.random.PRNGKey(0), step=jnp.zeros((), jnp.int32),
                    extra=objective.init_extra(jax.tree.map(jnp.asarray, trained["params0"])))
  loss_sum, pairs, out = jax.device_get(objective.loss_sums(trained["model1"], batch, ctx))

  (pc, nc), (pr, nr) = logps["policy", "chosen"], logps["policy", "rejected"]
  (rc, _), (rr, _) = logps["ref", "chosen"], logps["ref", "rejected"]
  real = nc > 0
  pc, pr, rc, rr, nc, nr = (x[real] for x in (pc, pr, rc, rr, nc, nr))
  losses, chosen_r, rejected_r = numpy_preference_loss(pc, pr, rc, rr, loss_type, 0.5, eps, nc, nr, 0.3)
  losses = losses + rpo_alpha * (-pc / nc)
  assert pairs == out["pairs"] == real.sum() == 7
  expected = {"loss_sum": losses, "chosen_reward_sum": chosen_r, "rejected_reward_sum": rejected_r,
              "accuracy_sum": (chosen_r > rejected_r).astype(np.float64), "margin_sum": chosen_r - rejected_r,
              "chosen_logp_sum": pc, "rejected_logp_sum": pr}
  np.testing.assert_allclose(loss_sum, losses.sum(), rtol=1e-4)
  lang = batch["chosen_lang_ids"][real, 0]
  for key, values in expected.items():
    np.testing.assert_allclose(out[key], values.sum(), rtol=1e-4, atol=1e-4, err_msg=key)
    per_lang = np.bincount(lang, values, minlength=len(languages))
    np.testing.assert_allclose(out[f"lang_{key}"], per_lang, rtol=1e-4, atol=1e-4, err_msg=key)
  np.testing.assert_array_equal(out["lang_pairs"], np.bincount(lang, minlength=len(languages)))
  # What the trainer reports: sums over pairs divided by the pair count, per language too.
  from polyglot_jax.train.metrics import MetricWindow
  window = MetricWindow(objective.metrics, languages)
  window.add(out)
  row = window.summary()
  np.testing.assert_allclose(row["rewards/accuracies"], (chosen_r > rejected_r).mean(), rtol=1e-6)
  np.testing.assert_allclose(row[f"loss/{languages[0]}"], losses[lang == 0].mean(), rtol=1e-4)
