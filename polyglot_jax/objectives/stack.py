"""Stacked objectives: a weighted sum of several, each with its own batch fields and data stream.

``config.objective = "stack"`` with ``config.stack.members = (("lm", 1.0),
("prealign", 0.1))`` trains on ``Σ_i weight_i · loss_i``, where each member's
loss is normalised by its own normaliser over the whole global batch (so
gradient accumulation stays exact). Member ``m``'s batch fields appear in
the stacked batch as ``m/<field>``, its metrics as ``m/<metric>`` and its
extra state under ``extra[m]``. Each member reads its own data stream:
``config.data`` with the member's overrides from ``config.stack.data``
(``(("prealign", "kind", "word_groups"), ("prealign", "train_files",
("dict.jsonl",)))``). ``stream_configs`` tells the data side
(data/backends.py) to build one stream per member and interleave their
batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from polyglot_jax.errors import ConfigError
from polyglot_jax.objectives.base import OBJECTIVES, Metric, Objective, StepContext, register


def member_config(config: ConfigDict, name: str) -> ConfigDict:
  """config with ``config.stack.data`` overrides of member ``name`` applied to its data section."""
  from polyglot_jax import configs as config_lib
  out = config_lib.config_from_dict(config.to_dict())
  for member, key, value in config.stack.data:
    if member == name:
      config_lib.set_key(out, f"data.{key}", value, from_string=False)
  with out.unlocked():
    out.objective = name
  return out


@register("stack")
class Stack(Objective):
  prenormalized = True
  summary_metric = None

  @staticmethod
  def config_section():
    c = ConfigDict()
    # (objective name, weight) pairs; each member trains on its own data stream.
    c.members = (("lm", 1.0),)
    # (member, config.data key, value) overrides of each member's data section (its files, kind, ...).
    c.data = ()
    return c

  def __init__(self, config, num_languages):
    super().__init__(config, num_languages)
    self.members = []
    for entry in config.stack.members:
      if len(entry) != 2 or entry[0] not in OBJECTIVES or entry[0] == "stack":
        raise ConfigError(f"config.stack.members entry {tuple(entry)!r} is not (objective name, weight) with a "
                          f"registered objective other than stack; registered: {sorted(OBJECTIVES)}")
      name, weight = entry
      self.members.append((name, float(weight), OBJECTIVES[name](member_config(config, name), num_languages)))
    names = [name for name, _, _ in self.members]
    if len(set(names)) != len(names):
      raise ConfigError(f"config.stack.members names an objective twice: {names}")
    self.aux_outputs = tuple(sorted({a for _, _, o in self.members for a in o.aux_outputs}))
    self.metrics = {f"{name}/{metric}": Metric(f"{name}/{m.key}", m.normalizer and f"{name}/{m.normalizer}",
                                               m.reduce, m.per_language,
                                               m.exp_name and f"{name}/{m.exp_name}")
                    for name, _, o in self.members for metric, m in o.metrics.items()}
    first = self.members[0]
    if first[2].summary_metric:
      self.summary_metric = f"{first[0]}/{first[2].summary_metric}"

  def batch_spec(self):
    return {f"{name}/{k}": spec for name, _, o in self.members for k, spec in o.batch_spec().items()}

  @classmethod
  def stream_configs(cls, config):
    return {f"{entry[0]}/": member_config(config, entry[0]) for entry in config.stack.members}

  def member_batch(self, batch, name):
    prefix = name + "/"
    return {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}

  def trainable(self, path):
    return all(o.trainable(path) for _, _, o in self.members)

  def keep_frozen(self, new_trainable, old_trainable):
    for _, _, o in self.members:
      new_trainable = o.keep_frozen(new_trainable, old_trainable)
    return new_trainable

  def init_extra(self, params):
    extra = {name: o.init_extra(params) for name, _, o in self.members}
    return extra if any(v is not None for v in extra.values()) else None

  def extra_shardings(self, param_shardings):
    extra = {name: o.extra_shardings(param_shardings) for name, _, o in self.members}
    return extra if any(v is not None for v in extra.values()) else None

  def normalizers(self, batch):
    # A prenormalized member (e.g. prealign) gets its own normalisers and divides by them itself.
    return {name: o.normalizers(self.member_batch(batch, name)) if o.prenormalized
            else o.batch_normalizer(self.member_batch(batch, name)) for name, _, o in self.members}

  def loss_sums(self, model, batch, ctx):
    total = jnp.zeros((), jnp.float32)
    outputs = {}
    rngs = jax.random.split(ctx.rng, len(self.members))
    for (name, weight, objective), rng in zip(self.members, rngs):
      sub_ctx = StepContext(rng=rng, step=ctx.step, extra=ctx.extra[name] if ctx.extra else None,
                            normalizers=ctx.normalizers[name] if objective.prenormalized else None)
      loss_sum, _, sums = objective.loss_sums(model, self.member_batch(batch, name), sub_ctx)
      if objective.prenormalized:
        total = total + weight * loss_sum
      else:
        total = total + weight * loss_sum / jnp.maximum(ctx.normalizers[name], 1.0)
      outputs.update({f"{name}/{k}": v for k, v in sums.items()})
    return total, jnp.ones((), jnp.float32), outputs

  def real_tokens(self, batch):
    real, total = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for name, _, o in self.members:
      r, t = o.real_tokens(self.member_batch(batch, name))
      real, total = real + r, total + t
    return real, total

  def evaluate(self, model, extra, step):
    out = {}
    for name, _, o in self.members:
      out.update({f"{name}/{k}": v for k, v in o.evaluate(model, extra[name] if extra else None, step).items()})
    return out
