"""Inference: KV-cache generation, proxy-tuned generation and per-token scoring."""

from polyglot_jax.decode.generate import generate, generate_proxy, sample_logits, score

__all__ = ["generate", "generate_proxy", "sample_logits", "score"]
