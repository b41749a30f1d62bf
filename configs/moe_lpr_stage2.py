"""MoE-LPR stage 2 (review): only the router trains, with LM + γ·LPR, on a small replay of old and new languages.

LPR (objectives/moe_lpr.py lpr_loss) is the mean over original-language
tokens of −log G_0, the router probability of expert 0 (the frozen dense
FFN): it sends the original languages back to the expert that already
knows them, while the new languages keep their new experts. Run after
configs/moe_lpr_stage1.py (its docstring has the whole sequence):

    polyglot-jax train --config configs/moe_lpr_stage2.py --workdir /tmp/moe_lpr/stage2

The paper reviews on under 1% of the stage-1 tokens; 1% of this demo's
stage 1 is 3 steps, so this runs 30 (10%) to leave the router time to
move. The review loss is LM + γ·LPR only, as in the paper: the balance and
router z-losses are off (balance would push original tokens away from
expert 0 again).

Measured (2026-11-30, 56 s on one CPU core; docs/moe.md "The stage configs on
the demo corpus"): moe/expert0_prob_original rises 0.22 → 0.44 in the 30
steps (it levels off near 0.67 after ~100) and moe/lpr_loss falls 1.66 →
0.94. Held-out eng/fra/rus come back from 1.088× to 1.031× the base's mean
loss (65% of stage 1's forgetting repaired; 78% after 150 steps), while
hin/ara/kor keep 98.5% of their stage-1 gain. The replay is the demo
training rows of the six languages, equally weighted; it is small because
the stage is short (30 steps × 8 rows × 256 tokens ≈ 61k tokens).
"""

import os

from polyglot_jax import configs as config_lib
from polyglot_jax.data.demo_corpus import DEMO_LOCALES


def get_config():
  config = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "moe_lpr_stage1.py"))
  config.unlock()
  root = os.path.dirname(config.init_from)
  original = tuple(config.moe_lpr.original_languages)  # Stage 1 records them.
  new = tuple(code for code, _ in config.data.mixture.weights)  # Stage 1's languages.
  config.moe_lpr.stage = 2
  config.moe_lpr.lpr_weight = 0.1  # γ, the paper's default.
  config.init_from = os.path.join(root, "stage1")
  # LPR matches per-token language ids to codes, so the run lists its languages (their order gives the ids).
  config.data.languages = tuple(sorted(set(DEMO_LOCALES.values())))
  config.data.mixture.weights = tuple((code, 1.0) for code in original + new)  # The replay set.
  config.optimizer.moe_balance_weight = 0.0
  config.optimizer.moe_z_loss = 0.0
  config.optimizer.warmup_steps = 3
  config.train.num_steps = 30
  config.checkpoint.every_steps = 30
  config.train.log_every_steps = 5  # A short stage: log often enough to see the router move.
  config.lock()
  return config
