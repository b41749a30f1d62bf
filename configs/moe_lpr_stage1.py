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

Measured (2026-11-30, 2 CPU cores, one core per run; docs/moe.md "The stage
configs on the demo corpus"): base 237 s, upcycle 2 s, this stage 277 s.
Step 0 evaluates exactly the base model (upcycling keeps its function; all
13 languages equal to 4 decimals). Held-out loss falls on hin/ara/kor
(11.17/11.75/10.38 → 7.03/7.36/6.68) and eng/fra/rus get worse
(4.46/4.33/4.17 → 4.90/4.81/4.39: 1.088× the base mean), because their
tokens now also go to the new experts, which is what stage 2 repairs.
moe/balance_loss stays between 1.06 and 1.25; moe/expert_load/* shows each
layer's split. Non-Latin languages this stage never sees fall about as far
as hin/ara/kor: with embeddings and attention frozen this demo-sized model
learns mostly a correction shared by every unseen script.
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
