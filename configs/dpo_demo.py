"""DPO on top of the demo model: preference pairs, a frozen copy of the starting policy as reference.

Run (after `polyglot-jax train --config configs/demo.py --workdir /tmp/polyglot_demo`):
    polyglot-jax train --config configs/dpo_demo.py --workdir /tmp/polyglot_dpo \
        --config.data.train_files=prefs.jsonl

prefs.jsonl holds {"prompt", "chosen", "rejected", "lang"} records (data.kind
preference; docs/post_training.md). The model's shape comes from the
checkpoint in init_from; the tokenizer is the demo run's. Expect: step 1
logs loss = log 2 = 0.6931 and zero rewards (policy == reference); then
loss falls below log 2 and rewards/accuracies rises above 0.5 as the
policy learns the pairs. For precomputed reference log-probs set
--config.dpo.reference=precomputed (docs/post_training.md shows how to
write them with `polyglot-jax score`).
"""

from polyglot_jax.configs import default_config


def get_config():
  config = default_config()
  config.objective = "dpo"
  config.init_from = "/tmp/polyglot_demo"  # The demo run's workdir (its newest checkpoint).
  d = config.data
  d.kind = "preference"
  d.tokenizer = "/tmp/polyglot_demo/demo_data/spm.model"  # The tokenizer the demo model was trained with.
  d.train_files = ()  # Preference JSONL files; set with --config.data.train_files.
  d.seq_len = 256  # Prompt + response + EOS per side; longer pairs are cut at the end.
  d.global_batch_size = 8  # Pairs per step (each pair is two rows: chosen and rejected).
  p = config.dpo
  p.loss_type = "sigmoid"
  p.beta = 0.1
  p.reference = "policy"
  o = config.optimizer
  o.learning_rate = 1e-4  # Far below pretraining's 3e-3: DPO moves a trained model a little.
  o.warmup_steps = 10
  o.weight_decay = 0.0
  config.train.num_steps = 100
  config.train.log_every_steps = 10
  config.checkpoint.every_steps = 50
  return config
