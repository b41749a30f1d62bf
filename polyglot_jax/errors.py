"""The errors a user can cause and fix; the CLI prints them as one line."""

from polyglot_jax.configs import ConfigError
from polyglot_jax.data.languages import UnknownLanguageError
from polyglot_jax.data.pipeline import DataError
from polyglot_jax.mesh import MeshError
from polyglot_jax.train.checkpoint import CheckpointError
from polyglot_jax.data.mixing import MixtureError
from polyglot_jax.interop import ConvertError
from polyglot_jax.plan.errors import PlanError
from polyglot_jax.tokenizer.report import ReportError
from polyglot_jax.train.trainer import TrainingError

USER_ERRORS = (ConfigError, DataError, MeshError, CheckpointError, TrainingError, UnknownLanguageError,
               MixtureError, ReportError, ConvertError, PlanError)
