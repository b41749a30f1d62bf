"""Document-level quality filters (Glot500 / ROOTS style) and PII masking.

Each filter returns a measured value; the cleaner compares it with the
language's threshold from ``config.clean`` and records the reason when a
document fails.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Scripts written without spaces between words: a "word" there is estimated
# as two characters (CJK, Thai, Lao, Khmer, Burmese).
UNSEGMENTED_SCRIPTS = {"Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr"}

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?![\w.])")


def word_count(text: str, script: str) -> float:
  if script in UNSEGMENTED_SCRIPTS:
    return sum(1 for c in text if unicodedata.category(c).startswith("L")) / 2.0
  return float(len(text.split()))


def _repeated_share(items: list) -> float:
  """Share of items that repeat an earlier item."""
  if not items:
    return 0.0
  counts = Counter(items)
  return sum(c - 1 for c in counts.values()) / len(items)


def char_repetition(text: str, n: int = 10) -> float:
  """Share of character n-grams that occur again (boilerplate, spam)."""
  return _repeated_share([text[i:i + n] for i in range(len(text) - n + 1)])


def word_repetition(text: str, n: int = 5) -> float:
  """Share of word n-grams that occur again."""
  words = text.split()
  return _repeated_share([tuple(words[i:i + n]) for i in range(len(words) - n + 1)])


def special_char_ratio(text: str) -> float:
  """Share of characters that are neither letters, marks, digits nor whitespace."""
  if not text:
    return 0.0
  special = sum(1 for c in text if not (c.isspace() or unicodedata.category(c)[0] in "LMN"))
  return special / len(text)


def mask_pii(text: str) -> tuple[str, Counter]:
  """Replaces emails, IPv4 addresses and phone numbers; returns the counts masked."""
  counts: Counter = Counter()

  def sub(pattern, tag, s):
    def repl(m):
      counts[tag] += 1
      return f"<{tag}>"
    return pattern.sub(repl, s)

  text = sub(EMAIL, "EMAIL", text)
  text = sub(IPV4, "IP", text)
  text = sub(PHONE, "PHONE", text)
  return text, counts
