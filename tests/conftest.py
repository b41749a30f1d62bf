"""Shared fixtures. The fake 8-device CPU platform must be set before jax loads."""

import os
import sys

# torch (the Hugging Face parity tests) imports triton when it is installed, and
# triton's LLVM crashes the process when tensorflow's is already loaded (one
# pytest process runs both). CPU torch never needs triton: make it unimportable.
sys.modules.setdefault("triton", None)

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _session_compilation_cache() -> None:
  """One persistent XLA compilation cache per test session, shared with the processes tests start.

  Many tests build the same tiny model and step functions (every ``train_and_evaluate`` jits its own
  init, train and eval steps): identical programs are compiled once per session instead of once per
  call. The directory is fresh (nothing carries over between sessions) and removed at exit.
  """
  import atexit
  import shutil
  import tempfile
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # The caller's own cache wins.
    return
  path = tempfile.mkdtemp(prefix="polyglot_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  # Programs that compile faster than this are not worth a file (jax's default, 1 s, misses most tiny steps).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


_session_compilation_cache()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")

from polyglot_jax import configs as config_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
  """The demo corpus and a small tokenizer, built once per test session."""
  from polyglot_jax.data.demo_corpus import build_demo_corpus
  from polyglot_jax.data.jsonl import read_jsonl
  from polyglot_jax.tokenizer.train import train_sentencepiece
  root = tmp_path_factory.mktemp("demo_data")
  build_demo_corpus(str(root))
  records, _ = read_jsonl([str(root / "train.jsonl")])
  model = train_sentencepiece(records, str(root / "spm"), vocab_size=2048, character_coverage=0.98)
  return {"dir": str(root), "train": str(root / "train.jsonl"), "eval": str(root / "eval.jsonl"),
          "tokenizer": model}


def tiny_config(demo_data, **overrides):
  """A ~100k-parameter model on the demo corpus; overrides as dotted keys."""
  c = config_lib.default_config()
  c.lock()
  values = {
      "data.source": "jsonl", "data.train_files": (demo_data["train"],), "data.eval_files": (demo_data["eval"],),
      "data.tokenizer": demo_data["tokenizer"], "data.seq_len": 64, "data.global_batch_size": 8,
      "data.eval_max_rows": 2,
      "model.vocab_size": 2048, "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 4,
      "model.num_kv_heads": 2, "model.mlp_dim": 64, "model.attention_block": 32,
      "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 2,
      "train.num_steps": 8, "train.log_every_steps": 2, "checkpoint.every_steps": 4,
      "checkpoint.async_save": False, "metrics.peak_flops_per_device": 1e9,
  }
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  for key, value in values.items():
    config_lib.set_key(c, key, value, from_string=False)
  config_lib.validate(c)
  return c


@pytest.fixture
def make_config(demo_data):
  return lambda **kw: tiny_config(demo_data, **kw)


def take_batches(it, n):
  """The next n batches of a data iterator."""
  return [next(it) for _ in range(n)]


def batches_equal(a, b):
  """Two lists of batches hold the same arrays in every field."""
  import numpy as np
  from polyglot_jax.data.packing import FIELDS
  return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in FIELDS)
