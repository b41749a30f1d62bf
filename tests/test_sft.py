"""The SFT objective: loss on response tokens only, packed examples isolated, examples counted."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyglot_jax import mesh as mesh_lib
from polyglot_jax.errors import ConfigError

RECORDS = [
    {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour", "lang": "fr"},
    {"instruction": "Translate to German", "input": "Thank you", "output": "Danke schön", "lang": "de"},
    {"instruction": "Name a colour", "output": "Blue", "lang": "en"},
    {"instruction": "Traduis en anglais", "input": "Merci", "output": "Thank you", "lang": "fr"},
]


@pytest.fixture(scope="module")
def sft(demo_data, tmp_path_factory):
  from conftest import tiny_config
  from flax import nnx

  from polyglot_jax.data.backends import make_data
  from polyglot_jax.train.build import build
  root = tmp_path_factory.mktemp("sft")
  path = root / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 4))
  config = tiny_config(demo_data, objective="sft", data__kind="instruction", data__template="plain",
                       data__train_files=(str(path),), data__eval_files=(), model__init_std=0.2)
  data = make_data(config, str(root / "run"))
  batch = {k: np.asarray(v) for k, v in next(iter(data.train)).items()}
  setup = build(config, len(data.languages), mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  model = nnx.merge(setup.graphdef, jax.device_get(setup.init_fn().params))
  import sentencepiece
  tok = sentencepiece.SentencePieceProcessor(model_file=demo_data["tokenizer"])
  return {"config": config, "batch": batch, "model": model, "setup": setup, "tok": tok,
          "languages": data.languages}


def test_loss_is_on_response_tokens_only(sft):
  batch, tok = sft["batch"], sft["tok"]
  # Every weighted stretch of targets is a response + EOS; every prompt target has weight 0.
  responses = {tuple(tok.encode(r["output"]) + [tok.eos_id()]) for r in RECORDS}
  seen = set()
  for row in range(batch["targets"].shape[0]):
    for seg in set(batch["segment_ids"][row]) - {0}:
      at = batch["segment_ids"][row] == seg
      weighted = tuple(batch["targets"][row][at & (batch["loss_weights"][row] > 0)])
      assert weighted in responses
      seen.add(weighted)
      assert (batch["loss_weights"][row][at][:-len(weighted)] == 0).all()
  assert len(seen) >= 3  # The first batch holds most of the examples.
  # The objective's loss equals a NumPy cross-entropy over the weighted tokens.
  objective = sft["setup"].objective
  loss_sum, weight, outputs = objective.loss_sums(sft["model"], {k: jnp.asarray(v) for k, v in batch.items()}, None)
  logits = np.asarray(sft["model"](batch["inputs"], batch["segment_ids"], batch["positions"]), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  w = batch["loss_weights"].astype(np.float64)
  np.testing.assert_allclose(float(loss_sum), (ce * w).sum(), rtol=1e-5)
  assert float(weight) == w.sum()
  segments = {(r, s) for r in range(w.shape[0]) for s in set(batch["segment_ids"][r]) - {0}
              if w[r][batch["segment_ids"][r] == s].sum() > 0}
  assert float(outputs["examples"]) == len(segments)


def test_packed_examples_do_not_see_each_other(sft):
  batch, model = sft["batch"], sft["model"]
  row = int(np.argmax([len(set(s) - {0}) for s in batch["segment_ids"]]))
  segs = sorted(set(batch["segment_ids"][row]) - {0})
  assert len(segs) >= 2, "the fixture packs several examples per row"
  packed = np.asarray(model(batch["inputs"][row:row + 1], batch["segment_ids"][row:row + 1],
                            batch["positions"][row:row + 1]))[0]
  for seg in segs:
    at = batch["segment_ids"][row] == seg
    alone = np.asarray(model(batch["inputs"][row][at][None]))[0]
    np.testing.assert_allclose(packed[at], alone, atol=2e-5)


def test_sft_on_text_records_is_refused(make_config):
  from polyglot_jax.objectives import make_objective
  with pytest.raises(ConfigError, match="config.data.kind='text' has none"):
    make_objective(make_config(objective="sft"), 1)
