"""PreAlign stage 2: the demo pretraining, from stage 1, with input-only code-switching.

With probability data.code_switch.rate (0.05) a dictionary word of a
document's input is replaced by a translation; its targets still name the
original word, so the model keeps the alignment of stage 1 without learning
to emit the switched words. Run after configs/prealign_stage1.py (its
docstring has the whole sequence):

    polyglot-jax train --config configs/prealign_stage2.py --workdir /tmp/prealign/stage2 \
        --config.init_from=/tmp/prealign/stage1

Without --config.init_from (and with code_switch.rate=0) this is the joint
baseline: the demo pretraining on the same corpus and budget.
"""

import os

from polyglot_jax import configs as config_lib

ROOT = "/tmp/prealign"


def get_config():
  config = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config.unlock()
  config.data.demo_dir = os.path.join(ROOT, "demo_data")
  config.data.code_switch.rate = 0.05
  config.data.code_switch.dictionary = os.path.join(ROOT, "dictionary.jsonl")
  return config
