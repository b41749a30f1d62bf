"""Scale planning without a pod: ahead-of-time compiles of the train step for named TPU slices.

- topologies.py: Cloud TPU slice names → topology, chips, HBM, peak FLOP/s (sourced).
- aot.py: compile the trainer's real step for a slice; memory, FLOPs, estimated step time, MFU.
- hlo.py: collectives (counts, bytes) in compiled HLO, loop bodies × trip counts.
- search.py: mesh × remat × micro-batch search, ranked by estimated step time.
- run_plan.py: tokens and epochs per language (mC4 sizes, the config's mixture), steps, days.
- report.py / commands.py: tables, JSON and ``polyglot-jax plan``.

Needs libtpu (``pip install -e '.[tpu]'``); nothing here needs a TPU or data files.
"""

from polyglot_jax.errors import PlanError

__all__ = ["PlanError"]
