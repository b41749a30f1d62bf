"""tokenizer extend: old ids keep their meaning, new rows are means of old rows, training goes on."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece as spm

from polyglot_jax import configs as config_lib
from polyglot_jax.tokenizer import extend
from polyglot_jax.train.trainer import train_and_evaluate

pytestmark = pytest.mark.slow


def new_language_records(n=300, seed=0):
  rng = np.random.default_rng(seed)
  syllables = ["ka", "ru", "mbe", "ngo", "zi", "wa", "tu", "li", "shi", "pa", "nde", "yo"]
  words = ["".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(60)]
  return [(" ".join(rng.choice(words, size=25)), "swa") for _ in range(n)]


def test_extend_tokenizer_and_checkpoint(make_config, demo_data, tmp_path):
  old_path = demo_data["tokenizer"]
  records = new_language_records()
  new_path, pieces = extend.add_pieces(old_path, records, 40, str(tmp_path / "ext"))
  old, new = spm.SentencePieceProcessor(model_file=old_path), spm.SentencePieceProcessor(model_file=new_path)
  assert 0 < len(pieces) <= 40 and new.vocab_size() == old.vocab_size() + len(pieces)
  assert all(new.id_to_piece(i) == old.id_to_piece(i) for i in range(old.vocab_size()))
  text = records[0][0]
  assert len(new.encode(text)) < len(old.encode(text))

  # A short run to extend, with an untied head so both tables grow.
  workdir, new_workdir = str(tmp_path / "run"), str(tmp_path / "grown")
  config = make_config(train__num_steps=4, model__tie_embeddings=False, data__eval_files=())
  before = train_and_evaluate(config, workdir)["state"]
  info = extend.extend_checkpoint(workdir, new_workdir, old_path, new_path)
  assert info == {"step": 4, "vocab_size": new.vocab_size(), "new_pieces": len(pieces)}

  with open(os.path.join(new_workdir, "config.json")) as f:
    grown_config = config_lib.config_from_dict(json.load(f))
  assert grown_config.model.vocab_size == new.vocab_size()
  grown_config.unlock()
  grown_config.train.num_steps = 6
  grown_config.data.train_files = (demo_data["train"],)
  after = train_and_evaluate(grown_config, new_workdir)
  assert after["step"] == 6

  # Check the grown checkpoint itself (step 4) against the formula.
  from polyglot_jax.train.checkpoint import Checkpointer
  from polyglot_jax.train.trainer import build
  grown_config.train.num_steps = 4
  setup = build(grown_config, 1)
  ckpt = Checkpointer(new_workdir, 0, 3, False)
  old_params = jax.device_get(before.params)
  restored = ckpt.manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(setup.abstract_state)))
  state = jax.device_get(restored["state"])
  ckpt.close()
  emb, head = state.params["embedding"], state.params["lm_head"]
  np.testing.assert_array_equal(emb[:old.vocab_size()], old_params["embedding"])
  np.testing.assert_array_equal(head[:, :old.vocab_size()], old_params["lm_head"])
  for i, piece in enumerate(pieces):
    surface = piece.replace("\u2581", " ")
    ids = old.encode(surface)
    if not piece.startswith("\u2581") and old.id_to_piece(ids[0]) == "\u2581":
      ids = ids[1:]
    np.testing.assert_allclose(emb[old.vocab_size() + i], old_params["embedding"][ids].mean(0), rtol=1e-6)
    np.testing.assert_allclose(head[:, old.vocab_size() + i], old_params["lm_head"][:, ids].mean(1), rtol=1e-6)
  mu = [x for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
        if getattr(path[-1], "key", None) == "embedding" and x.ndim == 2]
  assert mu and all(np.all(m[old.vocab_size():] == 0) for m in mu)
