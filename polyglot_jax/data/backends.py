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
  from polyglot_jax.objectives.base import objective_class
  streams = objective_class(config).stream_configs(config)
  if list(streams) != [""]:
    return _interleaved(streams, workdir)
  config = streams[""]  # The objective may read its records as a stricter kind (e.g. scored_preference).
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


class InterleavedBatches:
  """One batch from each stream per step, fields prefixed by the stream's prefix; state per stream."""

  def __init__(self, streams: dict):
    self.streams = streams

  def __iter__(self):
    return self

  def __next__(self):
    out = {}
    for prefix, stream in self.streams.items():
      out.update({f"{prefix}{k}": v for k, v in next(stream).items()})
    return out

  def get_state(self) -> dict:
    return {prefix: stream.get_state() for prefix, stream in self.streams.items()}

  def set_state(self, state: dict) -> None:
    for prefix, stream in self.streams.items():
      if prefix not in state:
        raise DataError(f"the checkpoint's data state has no stream '{prefix}' (it has {sorted(state)}); "
                        "resume with the same objective settings (e.g. config.stack.members) or use a new workdir")
      stream.set_state(state[prefix])


def _interleaved(streams: dict[str, ConfigDict], workdir: str) -> Data:
  """Several data streams (an objective's ``stream_configs``), one per batch-field prefix."""
  parts = {prefix: make_data(member, workdir) for prefix, member in streams.items()}
  prefixes = list(parts)
  languages = parts[prefixes[0]].languages
  for prefix in prefixes[1:]:
    if parts[prefix].languages != languages:
      raise DataError(f"the data streams '{prefixes[0]}' and '{prefix}' read data in different languages "
                      f"({list(languages)} vs {list(parts[prefix].languages)}); set config.data.languages so that "
                      "language ids agree")
  held = [parts[prefix].held_out for prefix in prefixes]
  held_out = [] if any(not h for h in held) else [
      {f"{prefix}{k}": v for prefix, batch in zip(prefixes, batches) for k, v in batch.items()}
      for batches in zip(*held)]
  first = parts[prefixes[0]]
  rejected = sum((p.rejected for p in parts.values()), first.rejected.__class__())
  return Data(languages, InterleavedBatches({prefix: p.train for prefix, p in parts.items()}), held_out,
              first.rates, first.sizes, rejected)
