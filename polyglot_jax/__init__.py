"""polyglot_jax: pretrain and align multilingual decoder LLMs with JAX and Flax on a device mesh.

``polyglot_jax.load(path)`` reads a model from a training workdir, a converted
workdir or a Hugging Face directory (see ``polyglot_jax.loading``).
"""

from polyglot_jax import quiet as _quiet  # Start-up defaults, set before jax loads.
_quiet.setup()

__version__ = "0.1.0"


def load(path: str, step: int | None = None, **kwargs):
  """Loads a model; see ``polyglot_jax.loading.load`` (imported lazily: jax loads only when asked)."""
  from polyglot_jax.loading import load as _load
  return _load(path, step, **kwargs)
