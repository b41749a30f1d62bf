"""Planning config: an ~8B dense decoder (Llama-3-8B shape, 256k tied vocabulary) on the 101 mC4 languages.

Plan (no TPU needed; libtpu from `pip install -e '.[tpu]'`):
    polyglot-jax plan --config configs/scale_8b.py --topology v5p-128
    polyglot-jax plan --config configs/scale_8b.py --topology v5p-128 --mesh fsdp=16,tensor=4

Expect (docs/scale.md has the tables; every figure is the XLA TPU compiler's
estimate, none measured): 8.03B parameters. On v5p-128 (64 chips) pure FSDP
with remat "dots", splash attention and the cross-entropy in 32 chunks of
32,768 tokens (512 per chip, what the default auto chunking picks) fits at
57.5 of 95.7 GiB per chip; the compiler estimates 2.56 s per step (~76%
MFU), 28 days for the 1T tokens. With the
full float32 logits (ce_chunk_size=0) it needs 94.6 GiB (at the compiler's
limit) and 2.48 s (~79%); with attention_impl="xla" 69.2 GiB and 3.23 s
(~60%). On v5e-8 it does not fit. UniMax (max_epochs 4): 59 of the 101
languages reach their cap, the others get 17.6B tokens each. A plan takes
~2–4 minutes on 2 CPU cores.

To train it for real, point data.train_files / data.tokenizer at mC4 JSONL
shards and a 256000-piece SentencePiece model.
"""

from polyglot_jax.configs import default_config
from polyglot_jax.data.languages import MC4_LANGUAGES


def get_config():
  config = default_config()
  m = config.model
  m.vocab_size = 256000
  m.d_model = 4096
  m.num_layers = 32
  m.num_heads = 32
  m.num_kv_heads = 8
  m.head_dim = 128
  m.mlp_dim = 14336
  m.rope_theta = 500000.0
  m.tie_embeddings = True
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.scan_layers = True
  m.remat_policy = "dots"
  m.attention_block = 512
  # Auto: on v5p-128 (64 chips) 32 chunks of 512 tokens per chip, 500 MiB of float32 logits per chip.
  m.ce_chunk_size = -1
  config.mesh.fsdp = -1
  d = config.data
  d.languages = MC4_LANGUAGES
  d.seq_len = 4096
  d.global_batch_size = 256  # 1M tokens per step.
  d.mixture.method = "unimax"
  d.mixture.max_epochs = 4.0
  o = config.optimizer
  o.learning_rate = 3e-4
  o.warmup_steps = 2000
  config.train.num_tokens = 1_000_000_000_000
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  return config
