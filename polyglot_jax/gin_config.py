"""gin bindings for the same config, for T5X-style users.

Every section of ``default_config()`` is a gin configurable of the same name
whose parameters are that section's fields, so ``model.num_layers = 4`` in a
gin file sets ``config.model.num_layers`` and ``data.mixture.alpha = 0.3``
sets the nested ``config.data.mixture.alpha``; top-level fields belong to the
configurable ``experiment``. A gin file resolves to exactly the ConfigDict its
ml_collections twin builds (tests/test_config.py checks gin/demo.gin against
configs/demo.py), and then goes through the same validation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin
from ml_collections import ConfigDict

from polyglot_jax import configs as config_lib

_REGISTERED: dict[str, type] = {}


def _register(path: str, section: ConfigDict) -> None:
  """Registers ``section`` (at dotted ``path``) and its nested sections with gin."""
  fields = []
  for key, value in section.items():
    if isinstance(value, ConfigDict):
      _register(f"{path}.{key}", value)
    else:
      fields.append((key, type(value), dataclasses.field(default=value)))
  parts = path.split(".")
  cls = dataclasses.make_dataclass(f"{'_'.join(parts)}_section", fields, frozen=True)
  module = ".".join(["polyglot_jax"] + parts[:-1])
  _REGISTERED[path] = gin.external_configurable(cls, name=parts[-1], module=module)


def _section_classes() -> dict[str, type]:
  """One dataclass per config section (nested ones too), registered with gin once."""
  if _REGISTERED:
    return _REGISTERED
  base = config_lib.default_config()
  top_fields = []
  for name, value in base.items():
    if isinstance(value, ConfigDict):
      _register(name, value)
    else:
      top_fields.append((name, type(value), dataclasses.field(default=value)))
  cls = dataclasses.make_dataclass("experiment_section", top_fields, frozen=True)
  _REGISTERED["experiment"] = gin.external_configurable(cls, name="experiment", module="polyglot_jax")
  return _REGISTERED


def config_from_gin(files: Sequence[str], bindings: Sequence[str] = ()) -> ConfigDict:
  """Parses gin files/bindings and returns the locked ConfigDict they describe."""
  sections = _section_classes()
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
  except (ValueError, OSError, KeyError) as e:
    raise config_lib.ConfigError(f"gin: {str(e).splitlines()[0]}") from None
  config = config_lib.default_config()
  config.lock()
  for name, cls in sections.items():
    try:
      values = dataclasses.asdict(cls())
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(f"gin section '{name}': {str(e).splitlines()[0]}") from None
    for key, value in values.items():
      dotted = key if name == "experiment" else f"{name}.{key}"
      if isinstance(value, list):
        value = tuple(value)
      config_lib.set_key(config, dotted, value, from_string=False)
  gin.clear_config()
  return config
