"""Hugging Face interop: safetensors checkpoints ↔ our workdirs, and ``config.init_from``.

Modules: hf_config (config.json ↔ config.model), hf (tensor names and
layouts, safetensors read/write), tokenizer_files, workdir (our params on
disk; ``load_params`` is ``polyglot_jax.loading.read_params``), convert (the two directions), commands (the CLI).
"""

from polyglot_jax.interop.convert import export_hf, import_hf
from polyglot_jax.interop.hf_config import ConvertError
from polyglot_jax.loading import read_params as load_params  # The init_from reader, kept by this name.

__all__ = ["ConvertError", "export_hf", "import_hf", "load_params"]
