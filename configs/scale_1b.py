"""Planning config: a ~1.3B dense decoder (1.3B with its 256k-piece multilingual embedding) on the 101 mC4 languages.

Plan (no TPU needed; libtpu from `pip install -e '.[tpu]'`):
    polyglot-jax plan --config configs/scale_1b.py --topology v5p-32
    polyglot-jax plan --config configs/scale_1b.py --topology v5e-64 --search

Expect (docs/scale.md has the measured tables): 1.28B parameters (0.5B of
them the embedding). On v5p-32 (16 chips, fsdp=16) the step fits with remat
"dots" at 88.7 of 95.7 GiB per chip; the compiler estimates 0.98 s per step
(~62% MFU), 2.2 days for the 100B tokens. The float32 logits over the 256k
vocabulary are the largest activation, so on 16 GB v5e chips the search
(v5e-32) splits the batch into 4 micro-batches with remat "dots" (1.57 s per
step). UniMax (max_epochs 4) gives each language ~1.09B tokens; the 18
smallest reach their 4-epoch cap. A plan takes ~3.5 minutes on 2 CPU cores.

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
