"""Every error a user can cause and fix, defined in one leaf module.

The modules that raise them import them from here (and re-export them under
their old names), so no package has to import another just for an error
class: ``train`` and ``interop`` no longer import each other. The CLI prints
any of ``USER_ERRORS`` as one line.
"""


class ConfigError(ValueError):
  """A config problem a user can fix; the message names the key and what to do."""


class DataError(ValueError):
  """Unreadable or unusable input; the message names the file and what to do."""


class MeshError(ValueError):
  """A mesh that does not fit the devices, or a rule that names no mesh axis."""


class MixtureError(ValueError):
  """Mixture settings that give no valid rates; the message names the setting."""


class UnknownLanguageError(ValueError):
  """A language code or alias that is not in the registry."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot serve this run; the message says what to do."""


class ConvertError(CheckpointError):
  """A checkpoint that cannot be converted or loaded exactly; the message names the file, key or tensor."""


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and what to do."""


class PlanError(ValueError):
  """A run plan that cannot be made; the message names the setting."""


class ReportError(ValueError):
  """A tokenizer report that cannot be made; the message names the file."""


USER_ERRORS = (ConfigError, DataError, MeshError, CheckpointError, TrainingError, UnknownLanguageError,
               MixtureError, ReportError, ConvertError, PlanError)
