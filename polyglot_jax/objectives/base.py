"""The objective plug-in contract shared by every training stage.

An objective says which batch fields it reads, which parameters train (the
rest are frozen and get no optimizer state), and how to turn a model and a
micro-batch into *sums*: the loss to differentiate, its normaliser, and
additive metrics. Returning sums (not means) is what makes gradient
accumulation and per-language metrics exact: the trainer adds micro-batches
up and divides once.
"""

from __future__ import annotations

import abc
from typing import Callable, Mapping

import jax
from ml_collections import ConfigDict

from polyglot_jax.configs import ConfigError

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(name: str) -> Callable[[type], type]:
  def wrap(cls):
    cls.name = name
    OBJECTIVES[name] = cls
    return cls
  return wrap


class Objective(abc.ABC):
  """Base class; subclasses set ``batch_fields`` and implement ``loss_sums``."""

  name: str = ""
  batch_fields: tuple[str, ...] = ()

  def __init__(self, config: ConfigDict, num_languages: int):
    self.config = config
    self.num_languages = num_languages

  def trainable(self, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` (keys from the model root) trains."""
    del path
    return True

  @abc.abstractmethod
  def loss_sums(self, model, batch: Mapping[str, jax.Array],
                rng: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (loss_sum to differentiate, normaliser, additive metric sums).

    ``rng`` is this micro-batch's PRNG key (from the train state, so resumed
    runs draw the same numbers); deterministic objectives ignore it.
    """


def make_objective(config: ConfigDict, num_languages: int) -> Objective:
  if config.objective not in OBJECTIVES:
    raise ConfigError(f"config.objective='{config.objective}' is unknown; registered objectives: {sorted(OBJECTIVES)}")
  return OBJECTIVES[config.objective](config, num_languages)


def per_language_sums(values_BxL: jax.Array, weights_BxL: jax.Array, lang_ids_BxL: jax.Array,
                      num_languages: int) -> tuple[jax.Array, jax.Array]:
  """Token-weighted sums of ``values`` and of ``weights`` per language id."""
  onehot_BxLxN = jax.nn.one_hot(lang_ids_BxL, num_languages, dtype=values_BxL.dtype)
  w = weights_BxL.astype(values_BxL.dtype)
  value_sums = jax.numpy.einsum("bl,bln->n", values_BxL * w, onehot_BxLxN)
  weight_sums = jax.numpy.einsum("bl,bln->n", w, onehot_BxLxN)
  return value_sums, weight_sums

