"""The objective plug-in contract (v2) shared by every training stage.

An objective is everything that makes one training method differ from
another; the trainer, the mesh and the optimizer are shared. It declares:

- **batch spec** (``batch_spec``): field name → per-row shape and dtype. The
  trainer assembles, shards and traces batches from it; the data side checks
  that its record kind gives every field (``data_kind``).
- **trainable parameters** (``trainable``): the rest are frozen and get no
  optimizer state; ``keep_frozen`` puts back a frozen slice of a trainable
  parameter after each update.
- **extra state** (``init_extra`` / ``extra_shardings``): frozen arrays it
  needs beside the parameters (a DPO reference, a frozen copy of expert 0).
  Created at build time from the starting parameters (after
  ``config.init_from``), sharded like the parameters, checkpointed with the
  train state, never given optimizer state.
- **auxiliary model outputs** (``aux_outputs``): what it reads from
  ``Decoder.__call__(..., return_aux=...)`` besides logits (per-layer hidden
  states, ...); the decoder computes nothing extra when nobody asks.
- **loss and metric sums** (``loss_sums``), with the step number and PRNG
  key in a ``StepContext``. Sums, not means, keep gradient accumulation and
  per-language metrics exact: the trainer adds micro-batches and divides once.
- **metric reductions** (``metrics``): each reported metric names the
  additive output it reads, its normaliser and its reduction (sum / mean /
  max). The trainer knows metric names only from here.
- **its own config section** (``config_section``): ``config.<name>``, with
  every field commented where the objective is defined; locked like the rest
  and present in gin.
- **an eval hook** (``evaluate``), run beside the held-out metrics.

Objectives stack: ``objectives/stack.py`` sums several, each weighted and
with its own batch fields and data stream.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError

OBJECTIVES: dict[str, type["Objective"]] = {}
# Top-level config keys that are not objective sections (an objective may not take their names).
RESERVED_SECTIONS = ("seed", "objective", "init_from", "model", "mesh", "logical_axis_rules", "data",
                     "optimizer", "train", "checkpoint", "clean", "metrics")

# The fields of a packed text row (data/packing.py writes them):
#   inputs, targets: token ids; targets are inputs shifted by one within a document.
#   loss_weights: 1.0-valued int weights on targets that count (0 on padding and masked prompts).
#   segment_ids: 1, 2, ... per document in the row; 0 marks padding.
#   positions: restart at 0 for each document.
#   lang_ids: the document's language id on every token.
TEXT_FIELDS = ("inputs", "targets", "loss_weights", "segment_ids", "positions", "lang_ids")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """One batch field: its shape per row (without the batch dim) and dtype."""
  shape: tuple[int, ...]
  dtype: str = "int32"


@dataclasses.dataclass(frozen=True)
class Metric:
  """How one reported metric is reduced from ``loss_sums`` outputs.

  Attributes:
    key: the output of ``loss_sums`` it reads.
    normalizer: another output it is divided by after both are summed over
      micro-batches and logged steps (e.g. the token or example count); None
      reports the reduced value itself.
    reduce: how ``key`` combines over micro-batches and steps: "sum" (additive),
      "mean" (the average of per-micro-batch values) or "max".
    per_language: ``key`` (and ``normalizer``) are [num_languages] vectors;
      the metric's name holds ``{lang}`` and is written once per language
      whose normaliser is positive.
    exp_name: also write exp(value) under this name (perplexity), or None.
  """
  key: str
  normalizer: str | None = None
  reduce: str = "sum"
  per_language: bool = False
  exp_name: str | None = None

  def __post_init__(self):
    if self.reduce not in ("sum", "mean", "max"):
      raise ValueError(f"Metric reduce='{self.reduce}'; use sum, mean or max")
    if self.normalizer and self.reduce != "sum":
      raise ValueError(f"Metric '{self.key}': a normaliser divides sums only")


@dataclasses.dataclass
class StepContext:
  """What a micro-batch's loss may depend on besides the model and the batch.

  Attributes:
    rng: this micro-batch's PRNG key (from the train state, so resumed runs draw
      the same numbers); deterministic objectives ignore it.
    step: int32 scalar, the optimizer step being computed (0-based), for
      loss-weight schedules.
    extra: the objective's extra state (``init_extra``), or None.
    normalizers: for ``prenormalized`` objectives, ``normalizers(global batch)``;
      else None.
  """
  rng: jax.Array
  step: jax.Array
  extra: Any = None
  normalizers: Any = None


def register(name: str) -> Callable[[type], type]:
  """Class decorator: makes an objective available as ``config.objective=name``."""
  def wrap(cls):
    if name in RESERVED_SECTIONS:
      raise ValueError(f"objective name '{name}' is a config section of its own; pick another")
    cls.name = name
    OBJECTIVES[name] = cls
    return cls
  return wrap


class Objective(abc.ABC):
  """Base class; subclasses implement ``batch_spec`` and ``loss_sums``."""

  name: str = ""
  # The record kind (data/records.py) whose rows this objective trains on.
  data_kind: str = "text"
  # Auxiliary decoder outputs read in loss_sums (see models/decoder.py AUX_OUTPUTS).
  aux_outputs: tuple[str, ...] = ()
  # Reported metric name → reduction. "loss" is what the progress line shows.
  metrics: Mapping[str, Metric] = {}
  # The per-language metric shown before vs after training (a name holding {lang}), or None.
  summary_metric: str | None = None
  # True: the trainer computes ``normalizers`` on the whole global batch first
  # and loss_sums returns a loss already divided by them (several normalisers,
  # e.g. stacked objectives); the trainer then does not divide gradients.
  prenormalized: bool = False

  def __init__(self, config: ConfigDict, num_languages: int):
    self.config = config
    self.num_languages = num_languages

  # ---- Declarations.

  @staticmethod
  def config_section() -> ConfigDict | None:
    """This objective's ``config.<name>`` section with its defaults, or None."""
    return None

  @property
  def section(self) -> ConfigDict:
    """This objective's config section (``config.<name>``)."""
    return self.config[self.name]

  @abc.abstractmethod
  def batch_spec(self) -> dict[str, FieldSpec]:
    """Field name → per-row FieldSpec of the batches this objective reads."""

  def trainable(self, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` (keys from the model root) trains."""
    del path
    return True

  def keep_frozen(self, new_trainable, old_trainable):
    """The trainable parameters after an update, with any part the objective freezes put back.

    ``trainable(path)`` freezes whole parameters. An objective that freezes
    a slice of one (MoE-LPR's expert 0 of the stacked expert weights) stops
    that slice's gradient in ``loss_sums`` and copies it back here from
    before the update, so that decoupled weight decay (which moves a weight
    whatever its gradient) cannot change it either.

    Args:
      new_trainable: the updated trainable parameters.
      old_trainable: the same tree before the update.

    Returns:
      The parameters to keep; the default keeps ``new_trainable``.
    """
    del old_trainable
    return new_trainable

  def init_extra(self, params) -> Any:
    """Extra frozen state made from the starting parameters (inside jit); None for none."""
    del params
    return None

  def extra_shardings(self, param_shardings) -> Any:
    """Shardings of ``init_extra``'s output given the parameters' shardings.

    The default applies ``init_extra`` to the sharding tree itself, which is
    right whenever the extra state is made of parameter subtrees (copies or
    selections). Override it when the extra state computes new arrays.
    """
    return self.init_extra(param_shardings)

  def normalizers(self, batch: Mapping[str, jax.Array]) -> Any:
    """For ``prenormalized`` objectives: the divisors of the whole global batch."""
    raise NotImplementedError(f"objective '{self.name}' is prenormalized but defines no normalizers()")

  def batch_normalizer(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The normaliser ``loss_sums`` returns, computed from the batch alone (used when stacked).

    The default counts target tokens (``loss_weights``), or rows when there is none.
    """
    if "loss_weights" in batch:
      return jnp.sum(batch["loss_weights"].astype(jnp.float32))
    return jnp.float32(next(iter(batch.values())).shape[0])

  @classmethod
  def stream_configs(cls, config: ConfigDict) -> dict[str, ConfigDict]:
    """Batch-field prefix → the config whose ``data`` section reads the stream that feeds those fields.

    A classmethod: the data side asks it before the objective is built. The
    default is one stream, ``config.data``, with unprefixed fields; a stacked
    objective gives one per member.
    """
    return {"": config}

  def data_streams(self) -> dict[str, str]:
    """Batch-field prefix → the record kind of the data stream that feeds those fields."""
    return {prefix: c.data.kind for prefix, c in type(self).stream_configs(self.config).items()}

  # ---- Computation.

  @abc.abstractmethod
  def loss_sums(self, model, batch: Mapping[str, jax.Array],
                ctx: StepContext) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (loss_sum to differentiate, its normaliser, additive outputs) for one micro-batch.

    The trainer sums ``loss_sum`` and the normaliser over micro-batches and
    divides the summed gradient by the summed normaliser (``prenormalized``
    objectives return a loss already normalised and the trainer divides by 1).
    Outputs are combined over micro-batches as ``metrics`` declares (sum unless
    a metric reads it with "mean" or "max").
    """

  def real_tokens(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(non-padding tokens, all token slots) of a batch, for throughput and the padding fraction.

    Counts every field named ``segment_ids`` or ending in ``segment_ids``
    (0 marks padding).
    """
    real = jnp.zeros((), jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for key, value in batch.items():
      if key == "segment_ids" or key.endswith("segment_ids"):
        real = real + jnp.sum(value != 0).astype(jnp.float32)
        total = total + jnp.float32(value.size)
    return real, total

  def evaluate(self, model, extra: Any, step: int) -> dict[str, float]:
    """Optional eval hook, run at every evaluation beside the held-out metrics.

    Args:
      model: the decoder with the current parameters (sharded), callable eagerly.
      extra: the objective's extra state.
      step: the training step.

    Returns:
      metric name → value, written as ``eval/<name>``.
    """
    del model, extra, step
    return {}

  # ---- Derived (used by the trainer).

  def output_reductions(self) -> dict[str, str]:
    """Output key → "sum" | "mean" | "max" (normalisers and undeclared outputs are sums)."""
    ops = {}
    for metric in self.metrics.values():
      ops[metric.key] = metric.reduce
      if metric.normalizer:
        ops.setdefault(metric.normalizer, "sum")
    return ops


def objective_class(config: ConfigDict) -> type[Objective]:
  """The class ``config.objective`` names; an unknown name is a ConfigError listing the registered ones."""
  if config.objective not in OBJECTIVES:
    raise ConfigError(f"config.objective='{config.objective}' is unknown; registered objectives: {sorted(OBJECTIVES)}")
  return OBJECTIVES[config.objective]


def make_objective(config: ConfigDict, num_languages: int) -> Objective:
  """The objective ``config.objective`` names, built for this config."""
  return objective_class(config)(config, num_languages)


def config_sections() -> dict[str, ConfigDict]:
  """Every registered objective's config section, by objective name."""
  out = {}
  for name, cls in sorted(OBJECTIVES.items()):
    section = cls.config_section()
    if section is not None:
      out[name] = section
  return out


def per_language_sums(values_BxL: jax.Array, weights_BxL: jax.Array, lang_ids_BxL: jax.Array,
                      num_languages: int) -> tuple[jax.Array, jax.Array]:
  """Token-weighted sums of ``values`` and of ``weights`` per language id."""
  onehot_BxLxN = jax.nn.one_hot(lang_ids_BxL, num_languages, dtype=values_BxL.dtype)
  w = weights_BxL.astype(values_BxL.dtype)
  value_sums = jax.numpy.einsum("bl,bln->n", values_BxL * w, onehot_BxLxN)
  weight_sums = jax.numpy.einsum("bl,bln->n", w, onehot_BxLxN)
  return value_sums, weight_sums
