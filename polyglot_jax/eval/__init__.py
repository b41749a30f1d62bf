"""Evaluation: task readers, answer extraction, and the ``polyglot-jax eval`` harness."""
