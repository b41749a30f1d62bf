"""MoE-LPR stage 1 (post-pretraining): new experts and the router learn new languages; the dense model stays frozen.

The `moe_lpr` objective (polyglot_jax/objectives/moe_lpr.py, docs/moe.md)
trains experts 1..3 and the router of every MoE layer with LM + the balance
loss; attention, embeddings, norms and expert 0 (the dense FFN) stay
bit-identical. The recipe on the offline demo corpus, with eng, fra, rus as
the original languages and hin, ara, kor as the new ones:

    # 0. a dense base on the original languages (the demo model):
    polyglot-jax train --config configs/demo.py --workdir /tmp/moe_lpr/base \
        --config.data.demo_dir=/tmp/moe_lpr/demo_data --config.data.mixture.method=weights \
        --config.data.mixture.weights="(('eng', 1.0), ('fra', 1.0), ('rus', 1.0))"
    # 1. upcycle it: 4 experts, top-2, on every layer:
    polyglot-jax moe upcycle --from /tmp/moe_lpr/base --workdir /tmp/moe_lpr/upcycled --num_experts 4 --top_k 2
    # 2. this stage, on the new languages only:
    polyglot-jax train --config configs/moe_lpr_stage1.py --workdir /tmp/moe_lpr/stage1
    # 3. the review stage: configs/moe_lpr_stage2.py.

Expect (not measured on this config yet; the reproduction in
docs/experiments.md records numbers): step 0 evaluates exactly the base
model (upcycling keeps its function); held-out loss falls on hin/ara/kor;
eng/fra/rus get somewhat worse, because their tokens now also go to the
new experts, which is what stage 2 repairs. moe/balance_loss starts near
1-2 and stays close to 1 (balanced routing); moe/expert_load/* shows each
layer's split.
"""

import os

from polyglot_jax import configs as config_lib

ROOT = "/tmp/moe_lpr"
ORIGINAL = ("eng", "fra", "rus")  # The base model's languages.
NEW = ("hin", "ara", "kor")  # The languages the new experts learn.


def get_config():
  config = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config.unlock()
  config.objective = "moe_lpr"
  config.moe_lpr.stage = 1
  config.moe_lpr.original_languages = ORIGINAL  # Read by stage 2's LPR (stage 1 does not use it).
  config.init_from = os.path.join(ROOT, "upcycled")
  # The MoE settings of the upcycled checkpoint (init_from also takes them from it; set here to read plainly).
  config.model.num_experts = 4
  config.model.moe_top_k = 2
  config.model.moe_layers = "all"
  config.data.demo_dir = os.path.join(ROOT, "demo_data")
  config.data.mixture.method = "weights"
  config.data.mixture.weights = tuple((code, 1.0) for code in NEW)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.moe_balance_weight = 0.01  # α, the paper's and Switch's value.
  config.train.num_steps = 300
  config.lock()
  return config
