"""PreAlign's alignment objective: the contrastive loss against NumPy, the objective's word vectors, training."""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.objectives.prealign import contrastive_loss

# English / French / German translations; each line is one group.
GROUPS = [("house", "maison", "Haus"), ("water", "eau", "Wasser"), ("city", "ville", "Stadt"),
          ("child", "enfant", "Kind"), ("green", "vert", "grün"), ("night", "nuit", "Nacht"),
          ("book", "livre", "Buch"), ("king", "roi", "König")]
LANGS = ("en", "fr", "de")


def numpy_contrastive(z, groups, tau, langs=None):
  """The formula, float64: mean over anchors of −(1/|P(i)|) Σ_{j∈P(i)} log softmax_j(s_i·), diagonal out.

  With ``langs``, copies of a word (same group and language) are left out of each other's sums.
  """
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  langs = np.arange(len(z)) if langs is None else langs
  losses = []
  for i in range(len(z)):
    if groups[i] < 0:
      continue
    others = [j for j in range(len(z)) if j != i and groups[j] >= 0
              and not (groups[j] == groups[i] and langs[j] == langs[i])]
    positives = [j for j in others if groups[j] == groups[i]]
    if not positives:
      continue
    s = np.array([z[i] @ z[j] / tau for j in others])
    log_softmax = s - np.log(np.exp(s - s.max()).sum()) - s.max()
    losses.append(-np.mean([log_softmax[others.index(j)] for j in positives]))
  return np.mean(losses) if losses else 0.0


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  # Groups of 3 and 2, a singleton (no positive: not an anchor, still a negative) and padding slots.
  groups = np.array([0, 0, 0, 1, 1, 2, -1, 3, 3, 3, -1, 4, 4])
  z = rng.normal(size=(len(groups), 16)).astype(np.float32)
  for tau in (0.1, 0.5):
    np.testing.assert_allclose(float(contrastive_loss(z, groups, tau)), numpy_contrastive(z, groups, tau),
                               rtol=1e-5)
  # Translations already identical and everything else orthogonal: the loss is −log(1/|P|)-ish small.
  tight = np.repeat(np.eye(4, dtype=np.float32), 2, axis=0)
  assert float(contrastive_loss(tight, np.repeat(np.arange(4), 2), 0.1)) < 1e-3
  assert float(contrastive_loss(z, np.arange(len(z)), 0.1)) == 0.0  # No positives anywhere.
  params = list(inspect.signature(contrastive_loss).parameters)
  assert params == ["word_vectors", "group_ids", "temperature"]


def test_contrastive_loss_pulls_groups_together():
  rng = np.random.default_rng(1)
  groups = np.repeat(np.arange(6), 3)
  z = jnp.asarray(rng.normal(size=(18, 8)), jnp.float32)

  def within_minus_between(v):
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v.T
    same = (groups[:, None] == groups[None]) & ~np.eye(18, dtype=bool)
    return cos[same].mean() - cos[groups[:, None] != groups[None]].mean()

  before = within_minus_between(np.asarray(z))
  grad = jax.jit(jax.grad(lambda v: contrastive_loss(v, groups, 0.1)))
  for _ in range(20):
    z = z - 0.5 * grad(z)
  assert within_minus_between(np.asarray(z)) > before + 0.5, (before, within_minus_between(np.asarray(z)))


def write_groups(path):
  with open(path, "w") as f:
    for i, words in enumerate(GROUPS):
      entries = [{"text": w, "lang": lang} for w, lang in zip(words, LANGS)]
      # A group's record language is its first word's: rotate, so every language has records.
      entries = entries[i % 3:] + entries[:i % 3]
      f.write(json.dumps({"words": entries}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def prealign(demo_data, tmp_path_factory):
  from conftest import tiny_config

  from polyglot_jax.data.backends import make_data
  from polyglot_jax.train.build import build
  root = tmp_path_factory.mktemp("prealign")
  path = root / "dict.jsonl"
  write_groups(path)
  config = tiny_config(demo_data, objective="prealign", data__kind="word_groups", data__train_files=(str(path),),
                       data__eval_files=(), data__languages=("eng", "fra", "deu"), model__tie_embeddings=False,
                       model__init_std=0.2, data__global_batch_size=4)
  data = make_data(config, str(root / "data"))
  batch = {k: np.asarray(v) for k, v in next(iter(data.train)).items()}
  setup = build(config, len(data.languages), mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  params = jax.device_get(setup.init_fn().params)
  return {"config": config, "batch": batch, "setup": setup, "params": params, "root": root, "path": path}


def test_objective_sums_match_a_numpy_recomputation(prealign):
  """Word vectors (token sums without BOS) per layer and output-embedding rows, groups within rows, the loss."""
  from flax import nnx

  from polyglot_jax.train.build import global_batch
  setup, batch, config = prealign["setup"], prealign["batch"], prealign["config"]
  sums = jax.device_get(setup.eval_step(prealign["params"], None, global_batch(setup, batch)))
  model = nnx.merge(setup.graphdef, prealign["params"])
  _, layers = model.hidden_states(jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]),
                                  jnp.asarray(batch["positions"]), per_layer=True)
  layers = np.asarray(layers, np.float64)
  head = np.asarray(model.lm_head[...], np.float64).T  # [V, E]
  vectors, groups, langs = [], [], []
  for b in range(batch["inputs"].shape[0]):
    for w in range(1, batch["word_ids"].shape[1] // 2 + 1):
      at = np.nonzero((batch["word_ids"][b] == w) & (batch["positions"][b] > 0))[0]
      if not len(at):
        continue
      g = batch["word_groups"][b, w - 1]
      groups.append(g)
      langs.append(batch["lang_ids"][b, at[0]])
      vectors.append([layers[n, b, at].sum(0) for n in range(layers.shape[0])] + [head[batch["inputs"][b, at]].sum(0)])
  vectors = np.asarray(vectors)  # [words, N + 1, E]
  counts = np.unique(groups, return_counts=True)[1]
  assert (counts % 3 == 0).all() and len(counts) >= 4, "every group whole in its rows"
  assert sums["words"] == len(groups)
  assert len(set(zip(groups, langs))) < len(groups), "the batch holds copies of a group (the case to check)"
  per_layer = [numpy_contrastive(vectors[:, n], np.asarray(groups), 0.1, np.asarray(langs))
               for n in range(vectors.shape[1])]
  names = [f"layer_{i}" for i in range(config.model.num_layers + 1)] + ["output_embedding"]
  for name, want in zip(names, per_layer):
    np.testing.assert_allclose(sums[f"align_sum/{name}"] / sums["words"], want, rtol=2e-4)
  np.testing.assert_allclose(sums["align_sum"] / sums["words"], np.mean(per_layer), rtol=2e-4)
  # The LM part: token cross-entropy over the words' own targets.
  logits = np.asarray(model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]),
                            jnp.asarray(batch["positions"])), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  ce = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  np.testing.assert_allclose(sums["ce_sum"], (ce * batch["loss_weights"]).sum(), rtol=1e-4)


def test_training_aligns_translations(prealign, demo_data):
  from conftest import tiny_config

  from polyglot_jax.train.trainer import train_and_evaluate
  root = prealign["root"]
  config = tiny_config(demo_data, objective="prealign", data__kind="word_groups",
                       data__train_files=(str(prealign["path"]),), data__eval_files=(),
                       data__languages=("eng", "fra", "deu"), model__tie_embeddings=False, model__init_std=0.2,
                       optimizer__learning_rate=1e-2, optimizer__warmup_steps=1,
                       train__num_steps=30, train__log_every_steps=1, checkpoint__every_steps=0,
                       prealign__alpha=1.0)
  train_and_evaluate(config, str(root / "run"))
  rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
  rows = [r for r in rows if "align_loss" in r]
  first, last = rows[0], rows[-1]
  assert last["align_loss"] < 0.5 * first["align_loss"], (first["align_loss"], last["align_loss"])
  assert first["align_accuracy"] < 0.5 and last["align_accuracy"] >= 0.9, (first, last)
  np.testing.assert_allclose(first["loss"], first["lm_loss"] + 1.0 * first["align_loss"], rtol=1e-4)
  for lang in ("eng", "fra", "deu"):
    assert f"lm_loss/{lang}" in last


def test_word_languages_get_ids_without_listing_them(demo_data, tmp_path):
  """English-led groups only: French and German words still get their own language ids."""
  from conftest import tiny_config

  from polyglot_jax.data.backends import make_data
  path = tmp_path / "dict.jsonl"
  path.write_text("".join(json.dumps({"words": [{"text": w, "lang": lang} for w, lang in zip(words, LANGS)]},
                                     ensure_ascii=False) + "\n" for words in GROUPS))
  config = tiny_config(demo_data, objective="prealign", data__kind="word_groups", data__train_files=(str(path),),
                       data__eval_files=())
  data = make_data(config, str(tmp_path / "data"))
  assert data.languages == ("deu", "eng", "fra")
  batch = next(iter(data.train))
  first = (np.asarray(batch["positions"]) == 1) & (np.asarray(batch["word_ids"]) > 0)
  assert set(np.asarray(batch["lang_ids"])[first].tolist()) == {0, 1, 2}
  from polyglot_jax.errors import DataError
  with pytest.raises(DataError, match=r"the data has languages \['fra'\] that config.data.languages"):
    make_data(tiny_config(demo_data, objective="prealign", data__kind="word_groups",
                          data__train_files=(str(path),), data__eval_files=(), data__languages=("eng", "deu"),
                          data__mixture__method="weights", data__mixture__weights=(("eng", 1.0), ("deu", 0.0))),
              str(tmp_path / "data2"))
