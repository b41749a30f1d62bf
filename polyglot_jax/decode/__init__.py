"""Inference: KV-cache generation and per-token scoring (``generate``, ``score``)."""

from polyglot_jax.decode.generate import generate, sample_logits, score

__all__ = ["generate", "sample_logits", "score"]
