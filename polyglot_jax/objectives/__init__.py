"""Training objectives, looked up by name (``config.objective``)."""

from polyglot_jax.objectives.base import OBJECTIVES, Objective, make_objective, register
from polyglot_jax.objectives import lm  # noqa: F401  (registers "lm")

__all__ = ["OBJECTIVES", "Objective", "make_objective", "register"]
