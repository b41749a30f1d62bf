"""Workdir paths: a local directory or an object-store URL (``gs://BUCKET/PATH``), one API for both.

Everything the trainer writes into its workdir goes through here, except the
orbax checkpoints (orbax takes the ``gs://`` path itself; see
``train/checkpoint.py``). Local paths use ``os`` and ``open``; URLs
(``scheme://...``) use ``tf.io.gfile``, which reads and writes GCS natively
(no gcsfuse mount) and also offers the in-memory ``ram://`` file system the
tests use as a stand-in for a bucket. TensorFlow is imported only when a URL
is first used, and is kept off the accelerators (JAX owns them).

Object stores have no real directories: ``makedirs`` there is cheap and
``rename`` of a directory copies and deletes every object under it.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from typing import IO

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str:
  """The URL scheme of ``path`` ("gs", "ram", ...), or "" for a local path (``file://`` counts as local).

  Args:
    path: a local path or a URL.

  Returns:
    The scheme in lower case, or "".
  """
  match = _URL.match(str(path))
  if not match or match.group(1).lower() == "file":
    return ""
  return match.group(1).lower()


def is_remote(path: str) -> bool:
  """Whether ``path`` is a URL served by ``tf.io.gfile`` (``gs://``, ``ram://``, ...) rather than a local path.

  Args:
    path: a local path or a URL.

  Returns:
    True for a non-local URL.
  """
  return bool(scheme(path))


def _local(path: str) -> str:
  path = str(path)
  return path[len("file://"):] if path.lower().startswith("file://") else path


def absolute(path: str) -> str:
  """``path`` made absolute (local) or normalised without a trailing slash (URL).

  Args:
    path: a local path or a URL.

  Returns:
    The absolute local path, or the URL with trailing slashes removed.
  """
  if is_remote(path):
    head, rest = str(path).split("://", 1)
    return f"{head}://{rest.rstrip('/')}"
  return os.path.abspath(_local(path))


def join(base: str, *parts: str) -> str:
  """``base`` joined with ``parts`` ("/" for URLs, ``os.path.join`` for local paths).

  Args:
    base: a local path or a URL.
    *parts: path components.

  Returns:
    The joined path.
  """
  if is_remote(base):
    return posixpath.join(str(base), *parts)
  return os.path.join(_local(base), *parts)


@functools.cache
def gfile():
  """``tf.io.gfile``, with TensorFlow imported quietly and kept off GPUs and TPUs (JAX's memory).

  Returns:
    The ``tf.io.gfile`` module.
  """
  from polyglot_jax import quiet
  with quiet.tensorflow_logs():
    import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # Already initialised, or no such device type.
    pass
  return tf.io.gfile


def exists(path: str) -> bool:
  """Whether a file or directory exists at ``path``.

  Args:
    path: a local path or a URL.

  Returns:
    True when it exists.
  """
  return gfile().exists(path) if is_remote(path) else os.path.exists(_local(path))


def isdir(path: str) -> bool:
  """Whether ``path`` is a directory (on an object store: a prefix with objects under it).

  Args:
    path: a local path or a URL.

  Returns:
    True for a directory.
  """
  return gfile().isdir(path) if is_remote(path) else os.path.isdir(_local(path))


def makedirs(path: str) -> None:
  """Creates ``path`` and its parents; an existing directory is fine.

  Args:
    path: a local path or a URL.
  """
  if is_remote(path):
    gfile().makedirs(path)
  else:
    os.makedirs(_local(path), exist_ok=True)


def listdir(path: str) -> list[str]:
  """The names in directory ``path`` (no trailing slashes), sorted.

  Args:
    path: a local path or a URL.

  Returns:
    The entry names.
  """
  if is_remote(path):
    return sorted(name.rstrip("/") for name in gfile().listdir(path))
  return sorted(os.listdir(_local(path)))


def open(path: str, mode: str = "r") -> IO:  # noqa: A001  (the module's own open, like os.open)
  """Opens a file for reading ("r", "rb"), writing ("w", "wb") or appending ("a").

  Text is UTF-8. On GCS an append re-uploads the whole object when the file
  is closed (objects are immutable), so append in batches, not line by line.

  Args:
    path: a local path or a URL.
    mode: the open mode.

  Returns:
    A file object (a context manager).
  """
  if is_remote(path):
    fs = gfile()
    if mode.startswith("w") and fs.exists(path):
      fs.remove(path)  # "w" replaces the file (TensorFlow's ram:// would otherwise append to it).
    return fs.GFile(path, mode)
  if "b" in mode:
    return builtins.open(_local(path), mode)
  return builtins.open(_local(path), mode, encoding="utf-8")


def read_text(path: str) -> str:
  """The contents of text file ``path``.

  Args:
    path: a local path or a URL.

  Returns:
    The text.
  """
  with open(path, "r") as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path``, replacing what was there; the parent directory is created.

  Args:
    path: a local path or a URL.
    text: the contents.
  """
  parent = posixpath.dirname(path) if is_remote(path) else os.path.dirname(_local(path))
  if parent:
    makedirs(parent)
  with open(path, "w") as f:
    f.write(text)


def rename(src: str, dst: str) -> None:
  """Moves file or directory ``src`` to ``dst`` (which must not exist); both local or both URLs.

  Args:
    src: the existing path.
    dst: the new path.
  """
  if is_remote(src) != is_remote(dst):
    raise ValueError(f"cannot move {src} to {dst}: one is local and the other a URL; copy it instead")
  if is_remote(src):
    gfile().rename(src, dst, overwrite=False)
  else:
    shutil.move(_local(src), _local(dst))


def copy_tree(src: str, dst: str) -> int:
  """Copies every file under directory ``src`` to the same relative place under ``dst`` (either may be a URL).

  Args:
    src: the directory to copy from.
    dst: the directory to copy into (created; files there are overwritten).

  Returns:
    The number of files copied.
  """
  count = 0
  makedirs(dst)
  for name in listdir(src):
    source, target = join(src, name), join(dst, name)
    if isdir(source):
      count += copy_tree(source, target)
      continue
    with open(source, "rb") as fin, open(target, "wb") as fout:
      shutil.copyfileobj(fin, fout, 1 << 20)
    count += 1
  return count


def local_mirror(path: str) -> str:
  """A local scratch directory standing for URL ``path`` (``path`` itself when it is local).

  For what must be made on a local disk first (a profiler trace, the demo
  corpus, plots) and then copied to the workdir with ``copy_tree``. The same
  URL always gets the same directory, under the system's temporary directory.

  Args:
    path: a local path or a URL.

  Returns:
    A local directory (created).
  """
  if not is_remote(path):
    return absolute(path)
  url = absolute(path)
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[1])[-80:]
  digest = hashlib.sha1(url.encode()).hexdigest()[:10]
  local = os.path.join(tempfile.gettempdir(), "polyglot_jax_workdirs", f"{scheme(url)}_{digest}_{readable}")
  os.makedirs(local, exist_ok=True)
  return local
