"""KV-cache generation and scoring against full-recompute references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyglot_jax import decode
from polyglot_jax import mesh as mesh_lib
from polyglot_jax.train.build import build


@pytest.fixture(scope="module", params=[True, False], ids=["scan", "unrolled"])
def model(request, demo_data):
  from conftest import tiny_config
  from flax import nnx
  config = tiny_config(demo_data, model__scan_layers=request.param, model__init_std=0.2)
  setup = build(config, 1, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
  state = setup.init_fn()
  return nnx.merge(setup.graphdef, jax.device_get(state.params))


def last_logits(model, seq, width=64):
  """Logits after the last token of ``seq``, from a full forward pass (no cache).

  The sequence is right-padded to a fixed width (causal attention: padding
  after it changes nothing before it), so every call reuses one compile.
  """
  from flax import nnx
  graphdef, state = nnx.split(model)
  if graphdef not in _FORWARDS:  # One compiled forward per model structure.
    _FORWARDS[graphdef] = jax.jit(lambda st, x, seg: nnx.merge(graphdef, st)(x, seg))
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(seq)] = seq
  segments = (np.arange(width) < len(seq)).astype(np.int32)[None]
  return _FORWARDS[graphdef](state, jnp.asarray(tokens), jnp.asarray(segments))[0, len(seq) - 1]


_FORWARDS = {}


def greedy_reference(model, prompt, n):
  """Argmax continuation recomputing the whole sequence every step (no cache)."""
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(jnp.argmax(last_logits(model, seq))))
  return seq[len(prompt):]


def test_prefill_logits_equal_the_forward_pass(model):
  tokens = jnp.asarray(np.arange(1, 21).reshape(2, 10) * 7 % 2000, jnp.int32)
  cache = model.init_cache(2, 32)
  logits, _ = model.decode(tokens, jnp.broadcast_to(jnp.arange(10), (2, 10)), cache, jnp.int32(0),
                           jnp.ones((2, 32), jnp.int32))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model(tokens)), atol=2e-5)


def test_greedy_generation_matches_recompute_for_mixed_lengths(model):
  prompts = [[5, 17, 300, 42], [9], list(range(100, 140))]
  got = decode.generate(model, prompts, 6)
  for prompt, tokens in zip(prompts, got):
    assert tokens == greedy_reference(model, prompt, 6)
  # A prompt gives the same tokens alone as in a batch.
  assert decode.generate(model, [prompts[1]], 6)[0] == got[1]


def test_greedy_generation_on_a_sharded_mesh_matches_one_device(model):
  """The same weights on a (data 2, fsdp 2, tensor 2) mesh: the KV cache is sharded, the tokens are unchanged."""
  from flax import nnx
  from polyglot_jax import configs
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  graphdef, state = nnx.split(model)
  with mesh_lib.activate(mesh, configs.DEFAULT_RULES):
    specs = nnx.get_partition_spec(state)
    cache_spec = jax.tree.leaves(jax.jit(lambda: model.init_cache(4, 32))())[0].sharding.spec
  placed = jax.tree.map(lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)), state, specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  sharded = nnx.merge(graphdef, placed)
  assert sharded.embedding[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  # [layers,] B, kv_heads, T, head_dim: batch over (data, fsdp) (expert, a batch axis too, has size 1 here),
  # kv heads over tensor.
  layers = (None,) if model.cfg.scan_layers else ()
  assert cache_spec == jax.sharding.PartitionSpec(*layers, ("data", "fsdp"), "tensor")
  prompts = [[5, 17, 300, 42], [9], list(range(100, 140))]  # 3 rows: padded to the 4 batch shards.
  got = decode.generate(sharded, prompts, 6)
  assert got == decode.generate(model, prompts, 6)
  assert got[0] == greedy_reference(model, prompts[0], 6)


def test_sampling_is_seeded_and_top_k_one_is_greedy(model):
  prompts = [[5, 17, 300], [8, 9]]
  a = decode.generate(model, prompts, 8, temperature=1.0, seed=3)
  assert a == decode.generate(model, prompts, 8, temperature=1.0, seed=3)
  assert a != decode.generate(model, prompts, 8, temperature=1.0, seed=4)
  assert decode.generate(model, prompts, 8, temperature=0.7, top_k=1, seed=5) == decode.generate(model, prompts, 8)
  assert decode.generate(model, prompts, 8, temperature=0.7, top_p=1e-6, seed=5) == decode.generate(model, prompts, 8)


def test_stop_ids_end_a_row_after_the_stop_token(model):
  prompt = [5, 17, 300]
  full = decode.generate(model, [prompt], 8)[0]
  stop = full[3]
  cut = decode.generate(model, [prompt], 8, stop_ids=(stop,))[0]
  assert cut == full[:full.index(stop) + 1]


def test_sample_logits_respects_top_k_and_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.PRNGKey(0), 1)[0]
  drawn = np.asarray(decode.sample_logits(logits, keys, 1.0, 2, 1.0))
  assert set(drawn) == {0, 1}
  np.testing.assert_allclose((drawn == 0).mean(), 0.5 / 0.8, atol=0.03)
  drawn = np.asarray(decode.sample_logits(logits, keys, 1.0, 0, 0.9))
  assert set(drawn) == {0, 1, 2}  # 0.5 + 0.3 < 0.9: the third token completes the nucleus.


def test_score_matches_log_softmax_of_the_forward_pass(model):
  seqs = [[5, 17, 300, 42, 7], [9, 10, 11]]
  out = decode.score(model, seqs)
  for seq, logps in zip(seqs, out):
    logits = np.asarray(model(jnp.asarray([seq], jnp.int32)))[0]
    ref = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(logps, [ref[t - 1, seq[t]] for t in range(1, len(seq))], atol=2e-5)
  completion = decode.score(model, seqs, prompt_lengths=[3, 1])
  np.testing.assert_allclose(completion[0], out[0][2:], atol=1e-6)
  np.testing.assert_allclose(completion[1], out[1], atol=1e-6)
  # Chunked cross-entropy (forced: 3 tokens per chunk) scores the same without the [B, L, V] logits.
  import dataclasses
  plain_cfg = model.cfg
  model.cfg = dataclasses.replace(plain_cfg, ce_chunk_size=3)
  try:
    chunked = decode.score(model, seqs)
  finally:
    model.cfg = plain_cfg
  for got, want in zip(chunked, out):
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_generate_and_score_commands_on_a_trained_workdir(make_config, tmp_path, capsys):
  import json
  from polyglot_jax import cli
  from polyglot_jax.train.trainer import train_and_evaluate
  import polyglot_jax
  workdir = str(tmp_path / "run")
  train_and_evaluate(make_config(train__num_steps=2, data__eval_files=()), workdir)
  prompts = tmp_path / "prompts.jsonl"
  chat = {"messages": [{"role": "user", "content": "Salut"}], "id": 4}
  prompts.write_text('{"prompt": "Hello", "id": 1}\n{"prompt": "Bonjour le monde", "id": 2}\n'
                     '{"instruction": "Translate", "input": "Hola", "id": 3}\n' + json.dumps(chat) + "\n")
  out = tmp_path / "out.jsonl"
  assert cli.main(["generate", "--model", workdir, "--input", str(prompts), "--out", str(out),
                   "--max_new_tokens", "5", "--template", "plain"]) == 0
  rows = [json.loads(line) for line in open(out)]
  assert [r["id"] for r in rows] == [1, 2, 3, 4]
  loaded = polyglot_jax.load(workdir)
  tok = loaded.tokenizer
  # Instruction and chat prompts are tokenised as the instruction and chat record kinds train on.
  assert decode.generate(loaded.model, [[tok.bos_id()] + tok.encode("Translate\nHola\n")], 5,
                         stop_ids=(tok.eos_id(),))[0][:len(rows[2]["completion_ids"])] == rows[2]["completion_ids"]
  chat_ids = tok.encode("<user>\n") + tok.encode("Salut\n") + tok.encode("<assistant>\n")
  assert decode.generate(loaded.model, [[tok.bos_id()] + chat_ids], 5,
                         stop_ids=(tok.eos_id(),))[0][:len(rows[3]["completion_ids"])] == rows[3]["completion_ids"]
  rows = rows[:2]
  for r, text in zip(rows, ["Hello", "Bonjour le monde"]):
    expected = decode.generate(loaded.model, [[tok.bos_id()] + tok.encode(text)], 5, stop_ids=(tok.eos_id(),))[0]
    assert r["completion_ids"] == [i for i in expected if i != tok.eos_id()]
    assert r["completion"] == tok.decode(r["completion_ids"])
  # Proxy-tuning with the same model as tuned and untuned changes nothing.
  proxied = tmp_path / "proxied.jsonl"
  assert cli.main(["generate", "--model", workdir, "--input", str(prompts), "--out", str(proxied),
                   "--max_new_tokens", "5", "--proxy_tuned", workdir, "--proxy_untuned", workdir]) == 0
  assert [json.loads(line)["completion_ids"] for line in open(proxied)][:2] == [r["completion_ids"] for r in rows]
  texts = tmp_path / "texts.jsonl"
  texts.write_text('{"text": "Hello world"}\n{"prompt": "Hello", "completion": " world"}\n')
  scores = tmp_path / "scores.jsonl"
  assert cli.main(["score", "--model", workdir, "--input", str(texts), "--out", str(scores)]) == 0
  a, b = [json.loads(line) for line in open(scores)]
  ids = [tok.bos_id()] + tok.encode("Hello world") + [tok.eos_id()]
  ref = decode.score(loaded.model, [ids])[0]
  np.testing.assert_allclose(a["logp"], ref.sum(), rtol=1e-5)
  assert a["num_tokens"] == len(ids) - 1 and b["num_tokens"] == len(tok.encode(" world")) + 1
  long = tmp_path / "long.jsonl"
  long.write_text('{"prompt": "ok"}\n{"prompt": "' + "Bonjour le monde " * 40 + '"}\n')
  capsys.readouterr()
  assert cli.main(["generate", "--model", workdir, "--input", str(long), "--out", str(out), "--max_new_tokens", "4",
                   "--long_prompts", "refuse"]) == 1
  assert f"{long}:2: the prompt has" in capsys.readouterr().err
  assert cli.main(["generate", "--model", workdir, "--input", str(long), "--out", str(out),
                   "--max_new_tokens", "4"]) == 0
  assert "1 prompts longer than 60 tokens kept BOS and their last 59 tokens" in capsys.readouterr().out
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "ok"}\n{"text": 3}\n')
  capsys.readouterr()
  assert cli.main(["generate", "--model", workdir, "--input", str(bad), "--out", str(out)]) == 1
  assert f"{bad}:2: needs a string 'prompt', an 'instruction'" in capsys.readouterr().err


def test_proxy_tuning_follows_the_combined_logits(model, demo_data):
  from conftest import tiny_config
  from flax import nnx
  small = {}
  for seed in (1, 2):
    config = tiny_config(demo_data, seed=seed, model__init_std=0.2, model__scan_layers=model.cfg.scan_layers)
    setup = build(config, 1, mesh=mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1]))
    small[seed] = nnx.merge(setup.graphdef, jax.device_get(setup.init_fn().params))
  prompts = [[5, 17, 300], [9]]
  # The same model as tuned and untuned: the large model alone.
  assert decode.generate_proxy(model, small[1], small[1], prompts, 5) == decode.generate(model, prompts, 5)
  got = decode.generate_proxy(model, small[1], small[2], prompts, 5)
  for prompt, tokens in zip(prompts, got):
    seq = list(prompt)
    for _ in range(5):
      combined = last_logits(model, seq) + last_logits(small[1], seq) - last_logits(small[2], seq)
      seq.append(int(jnp.argmax(combined)))
    assert tokens == seq[len(prompt):]
  assert got != decode.generate(model, prompts, 5)
