"""Dominant Unicode script of a text, to compare with the registry's script."""

from __future__ import annotations

import unicodedata
from collections import Counter

# Unicode character-name prefixes → ISO 15924 codes.
_NAME_PREFIXES = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARABIC": "Arab", "HEBREW": "Hebr",
    "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru", "GUJARATI": "Gujr", "TAMIL": "Taml",
    "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym", "SINHALA": "Sinh", "THAI": "Thai",
    "LAO": "Laoo", "KHMER": "Khmr", "MYANMAR": "Mymr", "GEORGIAN": "Geor", "ARMENIAN": "Armn",
    "ETHIOPIC": "Ethi", "HANGUL": "Hang", "HIRAGANA": "Hira", "KATAKANA": "Kana",
    "CJK UNIFIED IDEOGRAPH": "Hani", "CJK COMPATIBILITY IDEOGRAPH": "Hani",
}

# A registry script → the character scripts a text in it may be written with.
ACCEPTED = {
    "Hans": {"Hani"}, "Hant": {"Hani"}, "Jpan": {"Hani", "Hira", "Kana"}, "Kore": {"Hang", "Hani"},
}


def char_script(c: str) -> str | None:
  try:
    name = unicodedata.name(c)
  except ValueError:
    return None
  for prefix, code in _NAME_PREFIXES.items():
    if name.startswith(prefix):
      return code
  return None


def dominant_script(text: str) -> tuple[str | None, float]:
  """The script of most letters, and its share of the letters."""
  counts = Counter(s for s in (char_script(c) for c in text if c.isalpha()) if s)
  total = sum(counts.values())
  if not total:
    return None, 0.0
  script, n = counts.most_common(1)[0]
  return script, n / total


def matches(text: str, registry_script: str) -> tuple[bool, str | None]:
  """Whether the letters are mostly in the language's script (Japanese: kana or Han, ...)."""
  accepted = ACCEPTED.get(registry_script, {registry_script})
  counts = Counter(s for s in (char_script(c) for c in text if c.isalpha()) if s)
  total = sum(counts.values())
  if not total:
    return False, None
  inside = sum(n for s, n in counts.items() if s in accepted)
  return inside / total >= 0.5, counts.most_common(1)[0][0]
