"""QAlign stage II: response alignment (English question → English chain of thought) with the SFT objective.

Run after `polyglot-jax data synth-math --out data/math` (or with your own
English question → answer instruction records), from the stage-I model:

    polyglot-jax train --config configs/qalign_stage2.py --workdir runs/qalign_2 --config.init_from=runs/qalign_1

The network's shape comes from the init_from checkpoint; its tokenizer must
be given (config.data.tokenizer) unless the base run's is found there.
Stage I is configs/qalign_stage1.py; docs/post_training.md explains both.
"""

from polyglot_jax.configs import default_config


def get_config():
  config = default_config()
  config.objective = "sft"
  config.data.source = "jsonl"
  config.data.kind = "instruction"
  config.data.template = "plain"
  config.data.train_files = ("data/math/qalign_stage2.jsonl",)
  config.data.eval_files = ()
  config.data.seq_len = 192
  config.data.global_batch_size = 16
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.weight_decay = 0.01
  config.train.num_steps = 600
  config.train.log_every_steps = 50
  config.checkpoint.every_steps = 600
  return config
