"""Exact dedup after normalisation, and MinHash near-dedup (per language)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_PUNCT_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
  """Case-folded, NFKC, punctuation and whitespace runs collapsed to one space."""
  return _PUNCT_SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(text: str) -> bytes:
  return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


def shingles(text: str, n: int = 5) -> set[int]:
  """32-bit hashes of the character n-grams of the normalised text."""
  t = normalize(text)
  grams = [t] if len(t) < n else [t[i:i + n] for i in range(len(t) - n + 1)]
  return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams}


class MinHashIndex:
  """MinHash signatures with LSH banding; ``add`` says whether a near-duplicate is already in."""

  def __init__(self, num_perm: int = 64, bands: int = 16, threshold: float = 0.8, seed: int = 0):
    if num_perm % bands:
      raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    rng = np.random.default_rng(seed)
    # Multiply-shift hashing: h(x) = ((a·x + b) mod 2^64) >> 32, a odd.
    self.a = rng.integers(0, 2 ** 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    self.b = rng.integers(0, 2 ** 63, num_perm, dtype=np.uint64)
    self.bands, self.rows = bands, num_perm // bands
    self.threshold = threshold
    self.buckets: dict[tuple, list[int]] = {}
    self.signatures: list[np.ndarray] = []

  def signature(self, text: str) -> np.ndarray:
    x = np.fromiter(shingles(text), np.uint64)
    with np.errstate(over="ignore"):  # Wrapping mod 2^64 is the point.
      hashed = (self.a[:, None] * x[None, :] + self.b[:, None]) >> np.uint64(32)
    return hashed.min(axis=1)

  def add(self, text: str) -> float:
    """Adds the document; returns the highest estimated Jaccard with an earlier candidate (0 if none)."""
    sig = self.signature(text)
    best = 0.0
    keys = [(band, sig[band * self.rows:(band + 1) * self.rows].tobytes()) for band in range(self.bands)]
    seen = set()
    for key in keys:
      for idx in self.buckets.get(key, ()):
        if idx not in seen:
          seen.add(idx)
          best = max(best, float(np.mean(self.signatures[idx] == sig)))
    if best < self.threshold:
      idx = len(self.signatures)
      self.signatures.append(sig)
      for key in keys:
        self.buckets.setdefault(key, []).append(idx)
    return best
