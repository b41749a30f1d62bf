"""Objective contract v2: an objective defined only here uses every hook and trains through the real trainer.

The probe objective has its own batch field of another shape (``doc_count``,
one int per row, from a record kind registered here), frozen extra state (the
starting embedding), an auxiliary decoder output (per-layer hidden states), an
example-weighted metric, a max metric, its own config section, and a
step-dependent loss weight. It trains, checkpoints and resumes bit for bit with
``train_and_evaluate`` untouched.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.data import records
from polyglot_jax.errors import ConfigError, DataError
from polyglot_jax.objectives import FieldSpec, Metric, register
from polyglot_jax.objectives.lm import LM_METRICS, LanguageModelling, lm_sums
from polyglot_jax.train.build import build, global_batch
from polyglot_jax.train.trainer import train_and_evaluate


class DocCountText(records.TextKind):
  """Text rows plus the number of documents in each row (a per-row scalar field)."""

  def fields(self, seq_len):
    out = super().fields(seq_len)
    out["doc_count"] = FieldSpec(())
    return out

  def rows(self, contents, processor, lang_id, seq_len, options):
    rows = super().rows(contents, processor, lang_id, seq_len, options)
    rows["doc_count"] = rows["segment_ids"].max(axis=1).astype(np.int32)
    return rows


records.register_kind(DocCountText("text_doc_count", ("text", "lang")))


@register("probe")
class Probe(LanguageModelling):
  data_kind = "text_doc_count"
  aux_outputs = ("hidden_states",)
  metrics = dict(LM_METRICS, docs_per_row=Metric("doc_count_sum", "rows"),
                 hidden_max=Metric("hidden_abs_max", reduce="max"),
                 drift=Metric("drift", reduce="mean"))

  @staticmethod
  def config_section():
    c = ConfigDict()
    c.aux_weight = 0.5  # Weight of the hidden-state penalty once ramped up.
    c.ramp_steps = 4  # Steps over which the penalty weight rises linearly from 0.
    return c

  def batch_spec(self):
    spec = super().batch_spec()
    spec["doc_count"] = FieldSpec(())
    return spec

  def init_extra(self, params):
    return {"embedding0": params["embedding"]}

  def evaluate(self, model, extra, step):
    drift = float(jnp.sum(jnp.square(model.embedding[...] - extra["embedding0"])))
    return {"embedding_drift": drift, "eval_step": float(step)}

  def loss_sums(self, model, batch, ctx):
    logits, aux = model(batch["inputs"], batch["segment_ids"], batch["positions"], return_aux=self.aux_outputs)
    loss_sum, weight, out = lm_sums(logits, batch, self.num_languages, 0.0)
    hidden = aux["hidden_states"]  # [layers + 1, B, L, E]
    ramp = jnp.minimum(ctx.step.astype(jnp.float32) / self.section.ramp_steps, 1.0)
    penalty = jnp.mean(jnp.square(hidden[1])) * weight
    drift = jnp.sum(jnp.square(model.embedding[...] - ctx.extra["embedding0"]))
    out.update(weight=weight, doc_count_sum=jnp.sum(batch["doc_count"]).astype(jnp.float32),
               rows=jnp.float32(batch["doc_count"].shape[0]), hidden_abs_max=jnp.max(jnp.abs(hidden)),
               drift=drift)
    return loss_sum + self.section.aux_weight * ramp * penalty, weight, out


def probe_config(make_config, **kw):
  return make_config(objective="probe", data__kind="text_doc_count", **kw)


def test_probe_section_is_in_the_config_and_locked(make_config):
  config = probe_config(make_config, probe__aux_weight=0.25)
  assert config.probe.aux_weight == 0.25 and config.probe.ramp_steps == 4
  with pytest.raises(AttributeError):
    config.probe.typo = 1


def test_probe_step_outputs_match_numpy(make_config):
  config = probe_config(make_config)
  setup = build(config, 13, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  state = setup.init_fn()
  assert set(state.extra) == {"embedding0"}
  np.testing.assert_array_equal(jax.device_get(state.extra["embedding0"]), jax.device_get(state.params["embedding"]))
  assert state.extra["embedding0"].sharding.spec == state.params["embedding"].sharding.spec
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(1, 50, (8, 64)).astype(np.int32) for k in ("inputs", "targets")}
  batch.update(loss_weights=np.ones((8, 64), np.int32), segment_ids=np.ones((8, 64), np.int32),
               positions=np.tile(np.arange(64, dtype=np.int32), (8, 1)), lang_ids=np.zeros((8, 64), np.int32),
               doc_count=np.arange(1, 9, dtype=np.int32))
  batch["segment_ids"][0, 40:] = 0
  params0 = jax.device_get(state.params)
  state, out = setup.train_step(state, global_batch(setup, batch))
  o = jax.device_get(out["outputs"])
  assert o["doc_count_sum"] == 36.0 and o["rows"] == 8.0
  with mesh_lib.activate(setup.mesh, config.logical_axis_rules):
    model = nnx.merge(setup.graphdef, jax.tree.map(jnp.asarray, params0))
    _, aux = model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]),
                   jnp.asarray(batch["positions"]), return_aux=("hidden_states",))
  hidden = np.asarray(aux["hidden_states"])
  assert hidden.shape == (3, 8, 64, 32)
  np.testing.assert_allclose(o["hidden_abs_max"], np.abs(hidden).max(), rtol=1e-5)
  assert float(o["drift"]) == 0.0  # Step 0 computes with the starting embedding.
  assert float(jax.device_get(out["real_tokens"])) == 8 * 64 - 24
  assert float(jax.device_get(out["token_slots"])) == 8 * 64


def test_decoder_aux_hidden_states_agree_scan_and_unrolled(make_config):
  outs = {}
  for scan in (True, False):
    config = make_config(model__scan_layers=scan)
    setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
    state = setup.init_fn()
    params = jax.device_get(state.params)
    if not scan:  # Same weights as the scanned model, one subtree per layer.
      params = dict(params, blocks={i: jax.tree.map(lambda x, i=i: x[i], outs["stacked"]["blocks"]) for i in range(2)})
    else:
      outs["stacked"] = params
    model = nnx.merge(setup.graphdef, jax.tree.map(jnp.asarray, params))
    tokens = jnp.asarray(np.arange(16).reshape(2, 8) % 50)
    logits, aux = model(tokens, return_aux=("hidden_states", "final_hidden"))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(model(tokens)))
    outs[scan] = np.asarray(aux["hidden_states"])
  np.testing.assert_allclose(outs[True], outs[False], rtol=1e-5, atol=1e-6)


def test_probe_trains_checkpoints_and_resumes_bit_for_bit(make_config, tmp_path):
  config = probe_config(make_config, train__num_steps=6, checkpoint__every_steps=3, train__log_every_steps=1)
  full = train_and_evaluate(config, str(tmp_path / "full"))
  half = probe_config(make_config, train__num_steps=6, checkpoint__every_steps=3, train__log_every_steps=1,
                      train__stop_after_steps=3)
  assert train_and_evaluate(half, str(tmp_path / "resumed"))["stopped"] == "stop_after_steps"
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  a, b = jax.device_get((full["state"].params, full["state"].extra)), \
      jax.device_get((resumed["state"].params, resumed["state"].extra))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The extra state is frozen: still the starting embedding, while the embedding itself moved.
  assert not np.array_equal(a[0]["embedding"], a[1]["embedding0"])
  rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "full" / "metrics.jsonl"))}
  again = {r["step"]: r for r in map(json.loads, open(tmp_path / "resumed" / "metrics.jsonl"))}
  for step in (4, 5, 6):
    for key in ("loss", "docs_per_row", "hidden_max", "drift", "grad_norm"):
      assert rows[step][key] == again[step][key], (step, key)
  assert all(1.0 <= rows[s]["docs_per_row"] for s in rows)
  # The eval hook ran at the end, on the final parameters, beside the held-out metrics.
  final = json.load(open(tmp_path / "full" / "eval_results.json"))["metrics"]
  emb = np.asarray(a[0]["embedding"], np.float64) - np.asarray(a[1]["embedding0"], np.float64)
  assert final["eval_step"] == 6.0
  np.testing.assert_allclose(final["embedding_drift"], (emb ** 2).sum(), rtol=1e-4)
  assert "loss/eng" in final and "ppl/eng" in final
  assert rows[1]["drift"] == 0.0 and rows[6]["drift"] > 0.0
  assert 0.0 <= rows[6]["padding_fraction"] < 1.0
  assert rows[6]["real_tokens_per_sec"] <= rows[6]["tokens_per_sec"]


def test_objective_field_the_kind_cannot_give_names_both(make_config):
  config = make_config(objective="probe")  # data.kind stays "text": no doc_count field.
  with pytest.raises(ConfigError, match=r"objective 'probe' needs batch field 'doc_count' that record kind 'text'"):
    build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))


def test_record_of_the_wrong_kind_names_file_line_and_fields(tmp_path):
  path = tmp_path / "prefs.jsonl"
  path.write_text('{"text": "ok", "lang": "eng"}\n{"prompt": "p", "chosen": "a", "rejected": "b", "lang": "eng"}\n')
  with pytest.raises(DataError, match=rf"{path}:2: a 'preference' record where config.data.kind='text' expects "
                                      r"fields \['text', 'lang'\]"):
    records.read_records([str(path)], "text")


def test_empty_training_file_is_one_line_error(make_config, tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  config = make_config(data__train_files=(str(empty),))
  from polyglot_jax.data.backends import make_data
  with pytest.raises(DataError, match=rf"no usable 'text' records in {empty} \(the files are empty\)"):
    make_data(config, str(tmp_path / "w"))


def test_stacked_objectives_sum_members_with_their_own_normalisers(make_config):
  config = make_config(objective="stack", stack__members=(("lm", 1.0), ("probe", 0.5)),
                       stack__data=(("probe", "kind", "text_doc_count"),))
  setup = build(config, 3, mesh=mesh_lib.make_mesh({"fsdp": 8}))
  spec = setup.objective.batch_spec()
  assert "lm/inputs" in spec and "probe/doc_count" in spec and spec["probe/doc_count"].shape == ()
  assert set(setup.objective.metrics) >= {"lm/loss", "probe/docs_per_row", "probe/loss/{lang}"}
  state = setup.init_fn()
  rng = np.random.default_rng(1)
  batch = {}
  for name in ("lm", "probe"):
    weights = (rng.random((8, 64)) < (0.9 if name == "lm" else 0.4)).astype(np.int32)
    batch.update({f"{name}/inputs": rng.integers(1, 50, (8, 64)), f"{name}/targets": rng.integers(1, 50, (8, 64)),
                  f"{name}/loss_weights": weights, f"{name}/segment_ids": np.ones((8, 64)),
                  f"{name}/positions": np.tile(np.arange(64), (8, 1)), f"{name}/lang_ids": np.zeros((8, 64))})
  batch["probe/doc_count"] = np.ones(8)
  batch = {k: np.asarray(v, np.int32) for k, v in batch.items()}
  _, out = setup.train_step(state, global_batch(setup, batch))
  o = jax.device_get(out["outputs"])
  # Step 0: the probe's ramp is 0, so its loss is its plain cross-entropy.
  expected = o["lm/ce_sum"] / batch["lm/loss_weights"].sum() + 0.5 * o["probe/ce_sum"] / batch["probe/loss_weights"].sum()
  np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-5)


@register("nan_at_step_2")
class NanAtStep2(LanguageModelling):
  """LM whose loss is NaN at step 2 only (a skipped update)."""

  def loss_sums(self, model, batch, ctx):
    loss_sum, weight, out = super().loss_sums(model, batch, ctx)
    return jnp.where(ctx.step == 2, jnp.nan, loss_sum), weight, out


def test_logged_learning_rate_follows_applied_updates_after_a_skip(make_config, tmp_path):
  from polyglot_jax.train.optimizer import learning_rate_schedule
  config = make_config(objective="nan_at_step_2", train__num_steps=5, train__log_every_steps=1,
                       optimizer__warmup_steps=10, optimizer__learning_rate=1.0, checkpoint__every_steps=0)
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["skipped_steps"] == 1
  rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "metrics.jsonl"))}
  schedule = learning_rate_schedule(config.optimizer, 5)
  # Updates applied: steps 1, 2, 4, 5 (step 3 computed step index 2 and was skipped), so the
  # optimizer's schedule count lags the step by one after the skip.
  expected = {1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
  for step, count in expected.items():
    assert rows[step]["learning_rate"] == pytest.approx(float(schedule(count))), step
  assert rows[3]["skipped_steps"] == 1


def test_objective_sections_are_gin_configurables(tmp_path):
  from polyglot_jax import gin_config
  gin_file = tmp_path / "probe.gin"
  gin_file.write_text("experiment.objective = 'probe'\nprobe.aux_weight = 0.25\nstack.members = (('lm', 1.0), ('probe', 0.5))\n")
  config = gin_config.config_from_gin([str(gin_file)], ["probe.ramp_steps = 7"])
  assert config.objective == "probe" and config.probe.aux_weight == 0.25 and config.probe.ramp_steps == 7
  assert config.stack.members == (("lm", 1.0), ("probe", 0.5))


def test_stacked_data_streams_come_from_the_objective_and_resume(make_config, tmp_path):
  from polyglot_jax.data.backends import make_data
  config = make_config(objective="stack", stack__members=(("lm", 1.0), ("probe", 0.5)),
                       stack__data=(("probe", "kind", "text_doc_count"), ("probe", "shuffle_seed", 7)))
  data = make_data(config, str(tmp_path))
  batches = [next(data.train) for _ in range(4)]
  assert set(batches[0]) == {f"lm/{k}" for k in Probe.batch_spec(Probe(config, 1)) if k != "doc_count"} | \
      {f"probe/{k}" for k in Probe.batch_spec(Probe(config, 1))}
  assert not np.array_equal(batches[0]["lm/inputs"], batches[0]["probe/inputs"])  # Two streams, two seeds.
  np.testing.assert_array_equal(batches[0]["probe/doc_count"], batches[0]["probe/segment_ids"].max(axis=1))
  assert data.held_out and "probe/doc_count" in data.held_out[0]
  again = make_data(config, str(tmp_path))
  first = make_data(config, str(tmp_path))
  for _ in range(2):
    next(first.train)
  again.train.set_state(json.loads(json.dumps(first.train.get_state())))
  for expected in batches[2:]:
    got = next(again.train)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])
