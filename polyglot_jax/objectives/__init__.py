"""Training objectives, looked up by name (``config.objective``); the contract is in base.py."""

from polyglot_jax.objectives.base import (OBJECTIVES, FieldSpec, Metric, Objective, StepContext, config_sections,
                                          make_objective, register)
from polyglot_jax.objectives import lm, sft, stack  # noqa: F401  (register "lm", "sft" and "stack")
from polyglot_jax.objectives import dpo, prealign  # noqa: F401  (register "dpo" and "prealign")
from polyglot_jax.objectives import moe_lpr  # noqa: F401  (registers "moe_lpr")

__all__ = ["OBJECTIVES", "FieldSpec", "Metric", "Objective", "StepContext", "config_sections", "make_objective",
           "register"]
