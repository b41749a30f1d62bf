"""One entry point from config to batches, whichever backend (config.data.backend) reads the data.

All backends give the trainer the same things (``dataset.Data``): the
languages (their order is the lang id), a resumable iterator of this host's
batches with the fields of the record kind (``config.data.kind``), fixed
held-out batches, and the mixture rates with the language sizes they came
from. ``packed`` and ``grain`` serve every record kind; ``seqio`` text.
"""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from polyglot_jax.data import in_memory
from polyglot_jax.data import records as records_lib
from polyglot_jax.data.dataset import Data, language_rates  # noqa: F401  (re-exported)
from polyglot_jax.data.mixed_batches import PackedBatches, eval_batches
from polyglot_jax.errors import DataError


def make_data(config: ConfigDict, workdir: str) -> Data:
  """The ``Data`` of ``config.data.backend`` for records of ``config.data.kind``."""
  if config.objective == "stack":
    return _stacked(config, workdir)
  backend, kind = config.data.backend, config.data.kind
  records_lib.get_kind(kind)  # An unknown kind is named before anything is read.
  if backend == "seqio" and kind != "text":
    raise DataError(f"config.data.kind='{kind}': the seqio backend streams text records; use "
                    "config.data.backend=grain or packed for other kinds")
  if backend == "packed":
    return _packed(config, workdir)
  if backend == "grain":
    from polyglot_jax.data import grain_pipeline
    return grain_pipeline.make_data(config, workdir)
  if backend == "seqio":
    from polyglot_jax.data import seqio_tasks
    return seqio_tasks.make_data(config, workdir)
  raise DataError(f"config.data.backend='{backend}'; use packed, grain or seqio")


def _packed(config: ConfigDict, workdir: str) -> Data:
  d = config.data
  text = in_memory.load_text_data(config, workdir)
  train = PackedBatches(text.train_rows, [text.rates[lang] for lang in text.languages], d.global_batch_size,
                        d.shuffle_seed, jax.process_index(), jax.process_count())
  held_out = eval_batches(text.eval_rows, d.global_batch_size, jax.process_index(),
                          jax.process_count()) if text.eval_rows else []
  return Data(text.languages, train, held_out, text.rates, text.train_tokens, text.rejected)


class StackedBatches:
  """One batch from each member's stream per step, fields prefixed ``<member>/``; state per member."""

  def __init__(self, streams: dict):
    self.streams = streams

  def __iter__(self):
    return self

  def __next__(self):
    out = {}
    for name, stream in self.streams.items():
      out.update({f"{name}/{k}": v for k, v in next(stream).items()})
    return out

  def get_state(self) -> dict:
    return {name: stream.get_state() for name, stream in self.streams.items()}

  def set_state(self, state: dict) -> None:
    for name, stream in self.streams.items():
      if name not in state:
        raise DataError(f"the checkpoint's data state has no stream '{name}' (it has {sorted(state)}); "
                        "resume with the same config.stack.members or use a new workdir")
      stream.set_state(state[name])


def _stacked(config: ConfigDict, workdir: str) -> Data:
  """Stacked objectives: one data stream per member (config.data + its config.stack.data overrides)."""
  from polyglot_jax.objectives.stack import member_config
  parts = {name: make_data(member_config(config, name), workdir) for name, _ in config.stack.members}
  names = list(parts)
  languages = parts[names[0]].languages
  for name in names[1:]:
    if parts[name].languages != languages:
      raise DataError(f"stacked members '{names[0]}' and '{name}' read data in different languages "
                      f"({list(languages)} vs {list(parts[name].languages)}); set config.data.languages so that "
                      "language ids agree")
  held = [parts[name].held_out for name in names]
  held_out = [] if any(not h for h in held) else [
      {f"{name}/{k}": v for name, batch in zip(names, batches) for k, v in batch.items()}
      for batches in zip(*held)]
  first = parts[names[0]]
  rejected = sum((p.rejected for p in parts.values()), first.rejected.__class__())
  return Data(languages, StackedBatches({name: p.train for name, p in parts.items()}), held_out, first.rates,
              first.sizes, rejected)
