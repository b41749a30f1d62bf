"""Language mixture rates: proportional, temperature, UniMax, explicit weights.

Every function takes ``sizes``: language → amount of data (tokens, or any
unit, as long as it is the same for all languages).

- ``proportional``: p_l = n_l / Σ n.
- ``temperature``: p_l ∝ n_l^α (mT5 uses α = 0.3; α = 1 is proportional,
  α = 0 uniform).
- ``unimax`` (Chung et al. 2023): spread a token budget uniformly over the
  languages, smallest first, capping each at ``max_epochs`` × its size and
  re-spreading what a capped language could not take over the rest.
- ``weights``: explicit non-negative weights, normalised.

``MixtureSampler`` draws the language of each next example from the rates,
deterministically from (seed, draw index), so its state is one integer.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from polyglot_jax.errors import MixtureError  # noqa: F401  (re-exported)




def _check_sizes(sizes: Mapping[str, float]) -> None:
  if not sizes:
    raise MixtureError("the mixture has no languages")
  for lang, n in sizes.items():
    if n < 0:
      raise MixtureError(f"language '{lang}' has negative size {n}")


def proportional(sizes: Mapping[str, float]) -> dict[str, float]:
  return temperature(sizes, 1.0)


def temperature(sizes: Mapping[str, float], alpha: float = 0.3) -> dict[str, float]:
  """Shares p_l ∝ n_l^alpha (languages with no data get 0)."""
  _check_sizes(sizes)
  powered = {lang: (float(n) ** alpha if n > 0 else 0.0) for lang, n in sizes.items()}
  total = sum(powered.values())
  if total <= 0:
    raise MixtureError("every language in the mixture has size 0")
  return {lang: v / total for lang, v in powered.items()}


def unimax(sizes: Mapping[str, float], budget: float, max_epochs: float = 1.0) -> dict[str, float]:
  """UniMax token budgets per language (they add up to at most ``budget``).

  Args:
    sizes: language → tokens available.
    budget: total tokens of the run.
    max_epochs: no language is repeated more than this many times.

  Returns:
    language → tokens to draw from it. The total is less than ``budget`` only
    when every language is capped.
  """
  _check_sizes(sizes)
  if budget < 0 or max_epochs <= 0:
    raise MixtureError(f"unimax needs budget ≥ 0 and max_epochs > 0, got {budget} and {max_epochs}")
  order = sorted(sizes, key=lambda lang: (sizes[lang], lang))
  remaining = float(budget)
  out = {}
  for i, lang in enumerate(order):
    uniform_share = remaining / (len(order) - i)
    out[lang] = min(uniform_share, max_epochs * float(sizes[lang]))
    remaining -= out[lang]
  return {lang: out[lang] for lang in sizes}


def from_weights(weights: Mapping[str, float]) -> dict[str, float]:
  _check_sizes(weights)
  total = float(sum(weights.values()))
  if total <= 0:
    raise MixtureError("mixture weights add up to 0")
  return {lang: float(w) / total for lang, w in weights.items()}


def mixture_rates(method: str, sizes: Mapping[str, float], *, alpha: float = 0.3, budget: float = 0.0,
                  max_epochs: float = 1.0, weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """Sampling rates (summing to 1) by method name; a weighted language with no data is an error."""
  if method == "proportional":
    return proportional(sizes)
  if method == "temperature":
    return temperature(sizes, alpha)
  if method == "unimax":
    budgets = unimax(sizes, budget, max_epochs)
    return from_weights(budgets)
  if method == "weights":
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
      raise MixtureError(f"mixture weights name {unknown}, which have no data; remove them or add their files")
    empty = sorted(lang for lang, w in weights.items() if w > 0 and sizes[lang] <= 0)
    if empty:
      raise MixtureError(f"mixture weights give {empty} a positive rate but they have no data")
    return from_weights({lang: weights.get(lang, 0.0) for lang in sizes})
  raise MixtureError(f"unknown mixture method '{method}'; use proportional, temperature, unimax or weights")


class MixtureSampler:
  """Draws language indices with the given rates; resumable from one integer."""

  BLOCK = 4096

  def __init__(self, rates: Mapping[str, float], seed: int = 0):
    self.languages = list(rates)
    self.probs = np.asarray([rates[lang] for lang in self.languages], np.float64)
    self.probs = self.probs / self.probs.sum()
    self.seed = seed
    self.index = 0
    self._block_id = -1
    self._block = None

  def _draws(self, block_id: int) -> np.ndarray:
    if block_id != self._block_id:
      rng = np.random.default_rng([self.seed, block_id])
      self._block = rng.choice(len(self.languages), size=self.BLOCK, p=self.probs)
      self._block_id = block_id
    return self._block

  def next_index(self) -> int:
    block_id, offset = divmod(self.index, self.BLOCK)
    self.index += 1
    return int(self._draws(block_id)[offset])

  def get_state(self) -> dict:
    return {"index": self.index, "seed": self.seed}

  def set_state(self, state: Mapping) -> None:
    self.index, self.seed = int(state["index"]), int(state["seed"])


def rates_from_config(mixture, sizes: Mapping[str, float], run_tokens: float) -> dict[str, float]:
  """Rates from a ``config.data.mixture`` section; the UniMax budget is the run's tokens."""
  weights = {}
  for item in mixture.weights:
    lang, weight = item
    from polyglot_jax.data.languages import resolve  # Config codes may be aliases.
    weights[resolve(lang)] = float(weight)
  return mixture_rates(mixture.method, sizes, alpha=mixture.alpha, budget=run_tokens,
                       max_epochs=mixture.max_epochs, weights=weights)
