"""Offline multilingual demo: a ~3M-parameter decoder on 13 languages, CPU, minutes.

Run:
    polyglot-jax train --config configs/demo.py --workdir /tmp/polyglot_demo

Builds the demo corpus (Django's human translations + CLDR names from babel,
13 languages in 10 scripts, a parallel held-out split), trains a 4096-piece
language-balanced SentencePiece tokenizer, trains for 300 steps and prints
held-out loss and perplexity per language before vs after training.
Expect: about 2½–3 minutes on 2 CPU cores; held-out loss falls from ~8.3
(uniform over the vocabulary) to roughly 4.4–5.8 in every language.
"""

from polyglot_jax.configs import default_config


def get_config():
  config = default_config()
  config.data.source = "demo"
  config.data.seq_len = 256
  config.data.global_batch_size = 8
  config.data.mixture.method = "temperature"  # p ∝ tokens^0.3, as in mT5.
  config.data.mixture.alpha = 0.3
  m = config.model
  m.vocab_size = 4096
  m.d_model = 192
  m.num_layers = 4
  m.num_heads = 6
  m.num_kv_heads = 2
  m.mlp_dim = 512
  m.tie_embeddings = True
  o = config.optimizer
  o.learning_rate = 3e-3
  o.warmup_steps = 30
  o.weight_decay = 0.01
  config.train.num_steps = 300
  config.train.log_every_steps = 25
  config.checkpoint.every_steps = 100
  return config
