"""PreAlign stage 1: alignment initialisation on a dictionary, from random init, before pretraining.

The `prealign` objective (polyglot_jax/objectives/prealign.py) pulls the
vectors of translated words together in every layer (contrastive, τ = 0.1)
and trains the LM on the dictionary words themselves: loss = LM + α·align.
The network and tokenizer are the demo's, so that stage 2
(configs/prealign_stage2.py) pretrains on the demo corpus from here. Run:

    # 1. the demo corpus and tokenizer, in /tmp/prealign/demo_data:
    polyglot-jax data mixture --config configs/prealign_stage2.py --config.data.code_switch.rate=0
    # 2. a CLDR dictionary over the demo's 13 languages:
    polyglot-jax data dictionary build --source cldr --languages en,fr,de,es,ru,zh,ja,ko,ar,he,hi,el,th \
        --tokenizer /tmp/prealign/demo_data/spm.model --out /tmp/prealign/dictionary.jsonl
    # 3. this stage, then stage 2:
    polyglot-jax train --config configs/prealign_stage1.py --workdir /tmp/prealign/stage1
    polyglot-jax train --config configs/prealign_stage2.py --workdir /tmp/prealign/stage2 \
        --config.init_from=/tmp/prealign/stage1

Expect align_loss to fall several-fold within the 100 steps and
align_accuracy (the nearest word of another language is a translation) to
rise from near 0; docs/prealign.md explains the method and its metrics.
"""

import os

from polyglot_jax import configs as config_lib

ROOT = "/tmp/prealign"


def get_config():
  config = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config.unlock()
  config.objective = "prealign"
  config.prealign.alpha = 0.1
  config.data.source = "jsonl"
  config.data.kind = "word_groups"
  config.data.train_files = (os.path.join(ROOT, "dictionary.jsonl"),)
  config.data.eval_files = ()
  config.data.tokenizer = os.path.join(ROOT, "demo_data", "spm.model")
  config.data.seq_len = 128
  config.data.global_batch_size = 16
  config.data.mixture.method = "proportional"
  config.optimizer.warmup_steps = 20
  config.train.num_steps = 100
  config.train.log_every_steps = 10
  config.checkpoint.every_steps = 100
  return config
