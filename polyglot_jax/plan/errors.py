"""The planner's user error (one of polyglot_jax.errors.USER_ERRORS)."""


class PlanError(ValueError):
  """A plan that cannot be made as asked; the message names the input and what to do."""
