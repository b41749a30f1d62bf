"""Planning config: a ~200B dense decoder on all 101 mC4 languages with UniMax — "how do we train a 200B model on 100 languages?"

Plan (no TPU needed; libtpu from `pip install -e '.[tpu]'`):
    polyglot-jax plan --config configs/scale_200b.py --topology v5p-8192
    polyglot-jax plan --config configs/scale_200b.py --topology v5p-8192 --search --max_compiles 10
    polyglot-jax plan --config configs/scale_200b.py --topology v5p-1024 --mesh data=2,fsdp=256 \
        --config.model.remat_policy=full --config.model.ce_chunk_size=-1

Model: 92 layers, d_model 12288, 96 query / 8 key-value heads of 128, SwiGLU
49152, 256k tied vocabulary: 200B parameters. bf16 compute, float32
parameters and AdamW state (12 bytes per parameter: 2.4 TB before
activations). Sequence 4096, 1024 rows per step (4.2M tokens). 4T tokens
(~20 per parameter) spread by UniMax over the 101 mC4 languages, no
language repeated more than 4 times.

Expect (docs/scale.md has the tables; every figure is the XLA TPU compiler's
estimate, none measured): on v5p-8192 (4096 chips) the mesh data=2,
fsdp=512, tensor=4 with remat "dots" (the search's pick) and splash
attention fits at 43.7 of 95.7 GiB per chip with the full logits (1 GiB per
chip there); the compiler estimates 3.64 s per step (~77% MFU, an upper
bound), ~40 days for the 4T tokens. A v5p-1024 (512 chips) fits with the
mesh its search finds, data=2, fsdp=256, remat "full", once the
cross-entropy is chunked (ce_chunk_size=-1, auto: 16 chunks of 512 tokens
per chip): 76.7 GiB per chip, 33.0 s per step (~68% MFU), ~365 days. UniMax: 79 of the
101 languages reach their 4-epoch cap, the 22 largest get 116B tokens each,
English sees 4% of its mC4 tokens. A plan takes ~2–6 minutes on 2 CPU cores.

To train it for real, point data.train_files / data.tokenizer at mC4 JSONL
shards and a 256000-piece SentencePiece model.
"""

from polyglot_jax.configs import default_config
from polyglot_jax.data.languages import MC4_LANGUAGES


def get_config():
  config = default_config()
  m = config.model
  m.vocab_size = 256000
  m.d_model = 12288
  m.num_layers = 92
  m.num_heads = 96
  m.num_kv_heads = 8
  m.head_dim = 128
  m.mlp_dim = 49152
  m.rope_theta = 500000.0
  m.tie_embeddings = True
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.scan_layers = True  # Bounded compile time: one layer compiled, scanned 92 times.
  m.remat_policy = "dots"  # Keep matmul outputs; "full" also fits and costs ~20% more compute.
  m.attention_block = 512
  # Full float32 logits: one row of 4096 tokens per chip and the vocabulary split 4 ways make them
  # 1 GiB per chip on v5p-8192, where chunking only adds loop work. On v5p-1024 use the default
  # (-1): 16 chunks of 512 tokens per chip (docs/scale.md).
  m.ce_chunk_size = 0
  # The search's pick on v5p-8192 (docs/scale.md): 2 data-parallel replicas, each FSDP over
  # the rest with heads, MLP and vocabulary split 4 ways.
  config.mesh.data = 2
  config.mesh.fsdp = -1
  config.mesh.tensor = 4
  d = config.data
  d.languages = MC4_LANGUAGES
  d.seq_len = 4096
  d.global_batch_size = 1024  # 4.2M tokens per step.
  d.mixture.method = "unimax"
  d.mixture.max_epochs = 4.0
  o = config.optimizer
  o.learning_rate = 1.5e-4
  o.warmup_steps = 5000
  o.end_lr_ratio = 0.1
  config.train.num_tokens = 4_000_000_000_000
  config.train.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  return config
