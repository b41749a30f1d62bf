"""Start-up noise: the C++ lines of libtpu and TensorFlow that read like failures on a CPU machine.

Two sources print such lines although nothing is wrong:

* libtpu (in the ``tpu`` and ``test`` extras). Whenever libtpu is installed,
  jax tries to start a TPU backend, and on a machine without a TPU libtpu
  prints ``Failed to find host bounds for accelerator type ...`` and
  ``INVALID_ARGUMENT: ... TPU_WORKER_HOSTNAMES ...`` before jax quietly falls
  back to the CPU. :func:`setup` (run by ``import polyglot_jax``, so before
  jax loads when the package is imported first, as the CLI does) sets
  ``JAX_PLATFORMS=cpu`` only where the CPU is the one backend jax could end up
  with anyway: libtpu is installed, no TPU is attached (no TPU PCI device,
  ``/dev/accel*``, ``/dev/vfio`` group or ``TPU_*`` setting) and no other jax
  accelerator plugin (CUDA, ROCm, ...) is installed. A TPU VM or a GPU
  machine is left alone, so jax finds its accelerator as before. (libtpu has
  no setting that skips this probe; TPU_MIN_LOG_LEVEL does not hide these
  lines; jax skips a platform only when JAX_PLATFORMS leaves it out.)
* TensorFlow (behind clu's TensorBoard writer). Importing it prints
  ``oneDNN custom operations are on ...`` and ``cudart_stub.cc: Could not
  find cuda drivers ...`` from C++ static initialisers, which run before
  TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, and ``failed call to cuInit``.
  ``TF_CPP_MIN_LOG_LEVEL`` must be set before that import, but jax sets it to
  1 (``setdefault``) when it loads, and 3 for the whole process would also
  hide jax's and XLA's own errors. :func:`tensorflow_logs` therefore wraps
  only the TensorFlow import: level 3 while TensorFlow reads it, and the
  lines printed before it does are held to the same level.

What the user set always wins: a variable present in the environment
(``JAX_PLATFORMS``, even empty; ``TF_CPP_MIN_LOG_LEVEL``) is never changed,
and ``TF_CPP_MIN_LOG_LEVEL=0`` shows every TensorFlow line again.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import sys
from typing import Iterator, Mapping, MutableMapping

# jax's own list (jax/_src/hardware_utils.py): Google's PCI vendor id and its TPU device ids.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
# PCI classes of Google devices that are not TPUs: storage (NVMe persistent disk),
# network (gVNIC), display and bridges. Any other Google device counts as a TPU.
_NOT_TPU_PCI_CLASSES = ("0x01", "0x02", "0x03", "0x06")
# TPU_* variables that libraries set on machines without a TPU, inherited by child
# processes: libtpu's import (TPU_LIBRARY_PATH), jax when it finds no chip
# (TPU_SKIP_MDS_QUERY), TensorFlow's import (TPU_ML_PLATFORM*); and logging settings.
_TPU_VARIABLES_WITHOUT_TPU = frozenset({
    "TPU_LIBRARY_PATH", "TPU_SKIP_MDS_QUERY", "TPU_ML_PLATFORM", "TPU_ML_PLATFORM_VERSION",
    "TPU_MIN_LOG_LEVEL", "TPU_STDERR_LOG_LEVEL", "TPU_LOG_DIR", "TPU_MAX_LOG_SIZE_MB"})

# TF_CPP_MIN_LOG_LEVEL as the user set it, read by setup() before jax's setdefault.
_user_tf_log_level: str | None = None


def tpu_attached(environ: Mapping[str, str] = os.environ, root: str = "/") -> bool:
  """Whether this machine may have a TPU, or the user asked for one; errs towards yes.

  Yes for: a Google PCI device that is a TPU (jax's device ids) or not plainly
  storage/network; ``/dev/accel*`` (TPU v2-v4) or a ``/dev/vfio`` group
  (v5e and later); ``JAX_FORCE_TPU_INIT`` or ``LIBTPU_INIT_ARGS``; a ``TPU_*``
  variable (GKE and queued-resource TPU VMs set TPU_WORKER_HOSTNAMES,
  TPU_ACCELERATOR_TYPE, ...) other than those libraries set on any machine.
  ``root`` stands for ``/`` in tests.
  """
  if "JAX_FORCE_TPU_INIT" in environ or "LIBTPU_INIT_ARGS" in environ:
    return True
  if any(k.startswith("TPU_") and k not in _TPU_VARIABLES_WITHOUT_TPU for k in environ):
    return True
  dev = os.path.join(root, "dev")
  if glob.glob(os.path.join(dev, "accel*")):
    return True
  if any(os.path.basename(p) != "vfio" for p in glob.glob(os.path.join(dev, "vfio", "*"))):
    return True
  for vendor_path in glob.glob(os.path.join(root, "sys", "bus", "pci", "devices", "*", "vendor")):
    device = os.path.dirname(vendor_path)
    if _read(vendor_path) != GOOGLE_PCI_VENDOR:
      continue
    if _read(os.path.join(device, "device")) in TPU_PCI_DEVICE_IDS:
      return True
    if not _read(os.path.join(device, "class")).startswith(_NOT_TPU_PCI_CLASSES):
      return True
  return False


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip().lower()
  except OSError:
    return ""


def accelerator_plugin_installed(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether jax has a PJRT plugin other than libtpu (CUDA, ROCm, ...), found the way jax finds them."""
  if environ.get("PJRT_NAMES_AND_LIBRARY_PATHS"):
    return True
  try:
    if importlib.util.find_spec("jax_plugins") is not None:
      import jax_plugins  # A namespace package: each plugin is a subpackage.
      import pkgutil
      if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
        return True
    from importlib import metadata
    return bool(list(metadata.entry_points(group="jax_plugins")))
  except Exception:  # A broken installation: assume a plugin, i.e. change nothing.
    return True


def jax_defaults(environ: Mapping[str, str], *, libtpu_installed: bool, tpu_attached: bool,
                 accelerator_plugin: bool) -> dict[str, str]:
  """The environment defaults that keep jax from starting libtpu where no TPU can be used.

  Returns:
    ``{"JAX_PLATFORMS": "cpu"}`` when libtpu is installed but no TPU is
    attached and no other accelerator plugin is installed (jax would end up
    on the CPU after libtpu's failed start); ``{}`` otherwise, and always
    when the user set JAX_PLATFORMS (even to "", jax's automatic choice).
  """
  if "JAX_PLATFORMS" in environ or not libtpu_installed or tpu_attached or accelerator_plugin:
    return {}
  return {"JAX_PLATFORMS": "cpu"}


def setup(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
  """Sets the start-up defaults (see the module docstring); cheap, imports neither jax nor TensorFlow.

  Returns:
    the variables it set (none that were already set).
  """
  global _user_tf_log_level
  level = environ.get("TF_CPP_MIN_LOG_LEVEL")
  # jax setdefaults 1 when it loads: after jax, a 1 is jax's, not the user's.
  _user_tf_log_level = None if level is None or ("jax" in sys.modules and level == "1") else level
  if "JAX_PLATFORMS" in environ or importlib.util.find_spec("libtpu") is None:
    return {}  # Nothing to decide: skip probing the hardware.
  defaults = jax_defaults(environ, libtpu_installed=True, tpu_attached=tpu_attached(environ),
                          accelerator_plugin=accelerator_plugin_installed(environ))
  for key, value in defaults.items():
    environ.setdefault(key, value)
  return defaults


# absl / TensorFlow C++ log lines: "I0000 00:00:1795967315.888429    4860 port.cc:153] ..."
# (absl before InitializeLog), "I1129 15:49:37.955225 ..." and "2025-09-17 14:44:05.157831: I ..." (tsl).
_LOG_LINE = re.compile(rb"^(?:([IWEF])\d{4} \d\d:\d\d:[\d.]+ +\d+ "  # absl
                       rb"|\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: ([IWEF]) )"  # tsl
                       rb"\S+:\d+\] ")
_ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def keep_line(line: bytes, min_level: int) -> bool:
  """Whether a line written to stderr passes TF_CPP_MIN_LOG_LEVEL ``min_level`` (0 info .. 3 fatal only)."""
  if min_level <= 0:
    return True
  if line.rstrip(b"\r\n") == _ABSL_BANNER:
    return False
  m = _LOG_LINE.match(line)
  if not m:
    return True  # Not a C++ log line (Python's own stderr, tracebacks): always kept.
  severity = _SEVERITY[m.group(1) or m.group(2)]
  return severity >= min(min_level, 3)


def _filter(min_level: int, source, sink) -> None:
  """The filter process of :func:`_stderr_filtered`: copies the lines :func:`keep_line` keeps."""
  for line in source:
    if keep_line(line, min_level):
      sink.write(line)
      sink.flush()


@contextlib.contextmanager
def _stderr_filtered(min_level: int) -> Iterator[None]:
  """File descriptor 2, C++ writes included, passes through :func:`keep_line` inside the block."""
  if min_level <= 0 or os.name != "posix" or not sys.executable or not os.path.isfile(__file__):
    yield
    return
  import subprocess
  try:
    saved = os.dup(2)
  except OSError:  # No stderr at all.
    yield
    return
  try:
    # This file run as a script (it needs only the standard library), in its own process: a crash
    # of ours cannot swallow what was already written, and the filter needs no GIL while a C++
    # static initialiser holds it.
    proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(min_level)],
                            stdin=subprocess.PIPE, stdout=saved, stderr=saved, close_fds=True)
  except OSError:
    os.close(saved)
    yield
    return
  _flush_python_streams()
  os.dup2(proc.stdin.fileno(), 2)
  try:
    yield
  finally:
    _flush_python_streams()
    os.dup2(saved, 2)
    proc.stdin.close()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # A child process kept the pipe open: the filter ends with it.
      pass
    os.close(saved)


def _flush_python_streams() -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (AttributeError, OSError, ValueError):
      pass


@contextlib.contextmanager
def tensorflow_logs() -> Iterator[None]:
  """Wrap an ``import tensorflow`` (direct, or through clu, seqio, ...) in this; free once it is loaded.

  TF_CPP_MIN_LOG_LEVEL is the user's value, else 3 (errors reach us as Python
  exceptions), while TensorFlow reads it; the lines TensorFlow prints before
  it reads it are held to the same level. The variable is restored
  afterwards, so jax and child processes see what they saw before.
  """
  if "tensorflow" in sys.modules:  # Already loaded: it read the level then.
    yield
    return
  level = _user_tf_log_level if _user_tf_log_level is not None else "3"
  previous = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
  try:
    with _stderr_filtered(int(level) if level.strip().isdigit() else 0):
      yield
  finally:
    if previous is None:
      os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    else:
      os.environ["TF_CPP_MIN_LOG_LEVEL"] = previous


if __name__ == "__main__":  # The filter process of _stderr_filtered: polyglot_jax/quiet.py LEVEL.
  _filter(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
