"""Planning config: a ~1.3B dense decoder (1.3B with its 256k-piece multilingual embedding) on the 101 mC4 languages.

Plan (no TPU needed; libtpu from `pip install -e '.[tpu]'`):
    polyglot-jax plan --config configs/scale_1b.py --topology v5p-32
    polyglot-jax plan --config configs/scale_1b.py --topology v5e-64 --search

Expect (docs/scale.md has the tables; every figure is the XLA TPU compiler's
estimate, none measured): 1.28B parameters (0.5B of them the embedding). On
v5p-32 (16 chips, fsdp=16, remat "dots", splash attention) the cross-entropy
in 64 chunks of 8,192 tokens (512 per chip, the default auto chunking) fits
at 29.1 of 95.7 GiB per chip; the compiler estimates 0.91 s per step (~67%
MFU), 2.0 days for the 100B tokens. The full float32 logits
(ce_chunk_size=0: 31 GiB per chip and their gradient) also fit there, at
88.7 GiB, and are a little faster by the estimate (0.85 s, ~71%, 1.9
days). On 16 GB v5e chips the logits are what does not
fit. UniMax (max_epochs 4) gives each language ~1.09B tokens; the 18
smallest reach their 4-epoch cap. A plan takes ~3–4 minutes on 2 CPU cores.

To train it for real, point data.train_files / data.tokenizer at mC4 JSONL
shards and a 256000-piece SentencePiece model.
"""

from polyglot_jax.configs import default_config
from polyglot_jax.data.languages import MC4_LANGUAGES


def get_config():
  config = default_config()
  m = config.model
  m.vocab_size = 256000  # A 250k-class multilingual vocabulary (mT5: 250k pieces), padded to 128.
  m.d_model = 2048
  m.num_layers = 16
  m.num_heads = 16
  m.num_kv_heads = 8
  m.head_dim = 128
  m.mlp_dim = 5632
  m.tie_embeddings = True
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.scan_layers = True  # One compiled layer: bounded compile time for the planner and for training.
  m.remat_policy = "dots"
  m.attention_block = 512
  # Auto: on v5p-32 (16 chips) 64 chunks of 512 tokens per chip; 0 keeps the full logits.
  m.ce_chunk_size = -1
  config.mesh.fsdp = -1
  d = config.data
  d.languages = MC4_LANGUAGES
  d.seq_len = 2048
  d.global_batch_size = 256  # 0.5M tokens per step.
  d.mixture.method = "unimax"
  d.mixture.max_epochs = 4.0
  o = config.optimizer
  o.learning_rate = 3e-4
  o.warmup_steps = 2000
  config.train.num_tokens = 100_000_000_000
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 2000
  return config
