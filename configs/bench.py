"""Fixed benchmark model: d_model 512, 8 layers, 8 heads, SwiGLU 1376, vocab 32000, seq 512, batch 8, float32.

Run:
    python benchmarks/train_step.py --config configs/bench.py
Prints median step time, tokens/s, compile time and MFU against the float32
matmul ceiling measured in the same process. Expect on 2 CPU cores: MFU ≥ 0.5
of that ceiling and a first-step compile well under 30 s (docs/performance.md).
"""

from polyglot_jax.configs import default_config


def get_config():
  config = default_config()
  m = config.model
  m.vocab_size = 32000
  m.d_model = 512
  m.num_layers = 8
  m.num_heads = 8
  m.num_kv_heads = 8
  m.mlp_dim = 1376
  m.tie_embeddings = False
  m.dtype = "float32"
  m.param_dtype = "float32"
  # Unrolled layers run ~12% faster than lax.scan on the CPU backend; the scan
  # figure is in docs/performance.md as well (--config.model.scan_layers=true).
  m.scan_layers = False
  # Every activation kept, as a PyTorch train step keeps them (benchmarks/vs_torch.py); unrolled,
  # "dots" runs at the same speed (docs/performance.md).
  m.remat_policy = "none"
  config.data.seq_len = 512
  config.data.global_batch_size = 8
  config.train.num_steps = 1000
  return config
