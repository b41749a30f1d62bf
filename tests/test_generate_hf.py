"""decode.generate and decode.score against Hugging Face transformers on the same weights.

Tiny random Llama (untied head) and Qwen2 (q/k/v biases, tied head) models are
built with transformers on CPU torch, saved as safetensors, converted with
``polyglot-jax convert --from_hf`` and loaded with ``polyglot_jax.load``.
Greedy tokens must equal ``transformers``' ``generate(do_sample=False)`` token
for token, and per-token log-probabilities its log-softmaxed logits.
"""

import numpy as np
import pytest
import torch
import transformers

import polyglot_jax
from polyglot_jax import cli
from polyglot_jax import decode

from test_interop import make_hf_model, save_hf

torch.set_num_threads(1)

NEW_TOKENS = 10
# Ragged lengths: one token, short, and across the 32-token bucket boundary.
PROMPT_LENGTHS = (1, 5, 13, 37)
# Weights ~6x make_hf_model's 0.05 std, so greedy steps are far from argmax ties (checked below).
WEIGHT_SCALE = 6.0
MIN_MARGIN = 1e-2  # Smallest allowed gap between the top two HF logits at a greedy step.
LOGP_TOL = 1e-4
MODELS = {"llama_untied": ("llama", False), "qwen2_tied": ("qwen2", True)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
  """(the torch model, ours converted from its saved directory)."""
  family, tied = MODELS[request.param]
  model = make_hf_model(family, tied, seed=1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" not in name:
        p.mul_(WEIGHT_SCALE)
  # Decode for exactly NEW_TOKENS tokens: no EOS stop (Llama's default eos id 2 is in the vocabulary).
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  root = tmp_path_factory.mktemp(request.param)
  hf_dir = save_hf(model, root / "hf")
  workdir = str(root / "converted")
  assert cli.main(["convert", "--from_hf", hf_dir, "--workdir", workdir]) == 0
  loaded = polyglot_jax.load(workdir, dtype="float32")
  assert loaded.config.model.qkv_bias == (family == "qwen2")
  assert loaded.config.model.tie_embeddings == tied
  return model, loaded.model


def prompts(vocab, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, n).tolist() for n in PROMPT_LENGTHS]


def hf_greedy(model, prompt, n):
  """transformers' greedy continuation of one prompt (no padding) and the smallest top-2 logit gap."""
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=0, return_dict_in_generate=True,
                         output_scores=True)
  top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
  return out.sequences[0, len(prompt):].tolist(), float((top2[:, 0] - top2[:, 1]).min())


def hf_logps(model, seq):
  """log p(seq[t] | seq[:t]) for t = 1..len-1 from transformers' logits."""
  with torch.no_grad():
    logits = model(torch.tensor([seq])).logits[0].double()
  logp = torch.log_softmax(logits[:-1], dim=-1)
  return logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()


def test_greedy_generate_matches_transformers_token_for_token(pair):
  hf, ours = pair
  batch = prompts(hf.config.vocab_size)
  got = decode.generate(ours, batch, NEW_TOKENS)
  for prompt, tokens in zip(batch, got):
    want, margin = hf_greedy(hf, prompt, NEW_TOKENS)
    assert margin > MIN_MARGIN, f"near-tie in the reference ({margin:.1e}); pick another seed or scale"
    assert len(want) == NEW_TOKENS
    assert tokens == want, f"prompt of {len(prompt)} tokens: ours {tokens} vs transformers {want}"


@pytest.mark.parametrize("with_prompt_lengths", [False, True], ids=["all_tokens", "completion_only"])
def test_score_matches_transformers_log_softmax(pair, with_prompt_lengths):
  hf, ours = pair
  rng = np.random.default_rng(1)
  batch = prompts(hf.config.vocab_size, seed=2)
  completions = [rng.integers(0, hf.config.vocab_size, k).tolist() for k in (4, 9, 1, 6)]
  seqs = [p + c for p, c in zip(batch, completions)]
  lengths = [len(p) for p in batch] if with_prompt_lengths else None
  got = decode.score(ours, seqs, lengths)
  for i, seq in enumerate(seqs):
    want = hf_logps(hf, seq)
    if with_prompt_lengths:
      want = want[max(len(batch[i]), 1) - 1:]
    assert got[i].dtype == np.float32 and got[i].shape == want.shape
    np.testing.assert_allclose(got[i], want, atol=LOGP_TOL, rtol=0)
