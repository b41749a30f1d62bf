"""Training batches made ahead in a background thread, with the resume point of the batches actually used.

Packing (grain, seqio, the in-memory sampler) is Python work on the host. In
the training loop's thread it would delay every step's dispatch; here a
producer thread keeps a bounded queue (``depth`` batches) filled while the
main thread dispatches steps.

Exact resume: the producer runs ahead of the train step, so the iterator's
own ``get_state()`` describes batches that were made but not trained on. The
producer therefore records, right after making each batch, a *snapshot* of
the iterator's state at that point, and ``Prefetcher.get_state()`` answers
with the snapshot of the last batch the main thread took. A snapshot is
cheap and local to the host; turning it into the checkpoint's state may be a
collective (the streaming backends gather every host's resume point), so
that part runs in the main thread, when a checkpoint asks for it, exactly as
without prefetching.

How a snapshot is taken, per iterator:

* an iterator may define ``state_snapshot()``: called in the producer right
  after a batch, it returns a zero-argument callable that gives what
  ``get_state()`` would have returned at that point (called in the main
  thread; it may be a collective);
* ``data.backends.InterleavedBatches``: a snapshot of each stream;
* ``data.stream.StreamBatches`` (grain, seqio): its host-local resume point
  (``local_state()`` and the batch count), gathered by its own ``get_state``
  code when asked;
* ``data.mixed_batches.PackedBatches``: ``get_state()`` itself, which is
  host-local (every host holds the same global draw counts).

Any other iterator is read in the main thread, without a producer thread.

Errors: an exception raised while making a batch (including the iterator's
end, ``StopIteration``) is handed to the main thread and raised there by
``next()``, the same exception object with its message and traceback.
"""

from __future__ import annotations

import logging
import queue
import threading
import types
from typing import Any, Callable, Iterator

# Items on the queue: (kind, value, snapshot).
_BATCH, _ERROR = "batch", "error"


class _Stated:
  """An object whose ``get_state()`` answers a fixed snapshot (what InterleavedBatches asks its streams)."""

  def __init__(self, state_fn: Callable[[], dict]):
    self.get_state = state_fn


class _StreamView:
  """A StreamBatches as it was at a snapshot: its batch count and local resume point; the rest is the live object."""

  def __init__(self, stream, step: int, local: dict):
    self._stream, self.step, self._local = stream, step, local

  def local_state(self) -> dict:
    return self._local

  def __getattr__(self, name: str) -> Any:  # Settings fixed at construction: fingerprint, process index/count, ...
    return getattr(self._stream, name)


def snapshotter(iterator) -> Callable[[], Callable[[], dict]] | None:
  """How to snapshot ``iterator``'s state after each batch, or None when it offers no safe way.

  Args:
    iterator: a training-batch iterator with ``get_state()``.

  Returns:
    ``capture``: called in the thread that advances the iterator, right after
    a batch; returns a zero-argument callable giving ``get_state()``'s value at
    that point (called later in the main thread). None for an unknown iterator.
  """
  if callable(getattr(iterator, "state_snapshot", None)):
    return iterator.state_snapshot
  from polyglot_jax.data.backends import InterleavedBatches
  from polyglot_jax.data.mixed_batches import PackedBatches
  from polyglot_jax.data.stream import StreamBatches
  if isinstance(iterator, InterleavedBatches):
    parts = {prefix: snapshotter(stream) for prefix, stream in iterator.streams.items()}
    if any(capture is None for capture in parts.values()):
      return None
    get_state = type(iterator).get_state

    def capture_interleaved():
      view = types.SimpleNamespace(streams={prefix: _Stated(capture()) for prefix, capture in parts.items()})
      return lambda: get_state(view)
    return capture_interleaved
  if isinstance(iterator, StreamBatches):
    get_state = type(iterator).get_state

    def capture_stream():
      view = _StreamView(iterator, iterator.step, iterator.local_state())
      return lambda: get_state(view)
    return capture_stream
  if isinstance(iterator, PackedBatches):
    def capture_packed():
      state = iterator.get_state()
      return lambda: state
    return capture_packed
  return None


class Prefetcher:
  """``iterator``'s batches, made ``depth`` ahead in a producer thread; ``get_state`` follows the batches taken.

  Create it after ``iterator.set_state`` (a restore) and before the first
  ``next``; from then on only the producer touches the iterator. ``close()``
  (or leaving a ``with`` block) stops the producer.

  Args:
    iterator: the training-batch iterator (``next`` and ``get_state()``).
    depth: batches made ahead (the queue's size); 0 makes each batch on
      demand in the main thread.
    name: the producer thread's name.
  """

  def __init__(self, iterator: Iterator, depth: int = 2, name: str = "polyglot-prefetch"):
    self.iterator = iterator
    capture = snapshotter(iterator) if depth > 0 else None
    self.threaded = capture is not None
    self._capture = capture
    self._error: BaseException | None = None
    self._closed = False
    if not self.threaded:
      if depth > 0:
        logging.info("%s has no snapshot of its state per batch; its batches are made in the main thread",
                     type(iterator).__name__)
      return
    self._state_fn = capture()  # Before any batch: the state a restore set (main thread; no producer yet).
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
    self._thread.start()

  def __iter__(self):
    return self

  def _put(self, item) -> bool:
    """Puts ``item`` on the queue unless closed first; False when closed."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self.iterator)
        if not self._put((_BATCH, batch, self._capture())):
          return
    except BaseException as e:  # noqa: BLE001  (StopIteration and errors alike are the main thread's to raise)
      self._put((_ERROR, e, None))

  def __next__(self):
    if not self.threaded:
      return next(self.iterator)
    if self._error is not None:
      raise self._error
    if self._closed:
      raise RuntimeError("the batch prefetcher is closed; make a new one to read more batches")
    kind, value, state_fn = self._queue.get()
    if kind == _ERROR:
      if not isinstance(value, StopIteration):
        value.add_note("(raised while making a batch in the data prefetch thread)")
      self._error = value
      raise value
    self._state_fn = state_fn
    return value

  def get_state(self) -> dict:
    """The iterator's state after the last batch ``next`` returned (what a checkpoint must hold).

    Returns:
      What ``iterator.get_state()`` returned, or would have, right after that
      batch; may be a collective (call it on every host, in the main thread).
    """
    if not self.threaded:
      return self.iterator.get_state()
    return self._state_fn()

  def close(self, timeout: float = 60.0) -> None:
    """Stops the producer and waits (up to ``timeout`` seconds) for it to finish the batch it is making.

    Args:
      timeout: seconds to wait; a producer still busy after that is left to
        finish on its own (a daemon thread: it never keeps the process alive).
    """
    if not self.threaded or self._closed:
      self._closed = True
      return
    self._closed = True
    self._stop.set()
    while True:  # Unblock a producer waiting for room.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)
    if self._thread.is_alive():
      logging.warning("the data prefetch thread is still making a batch after %.0f s; leaving it", timeout)

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
