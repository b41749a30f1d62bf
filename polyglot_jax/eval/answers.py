"""Numeric answer extraction from generated text (MGSM-style math answers), in any script.

Digits of every script (Unicode category Nd: Bengali, Devanagari, Thai, Arabic-Indic,
Persian, Telugu, Tamil, full-width, ...) are read through ``unicodedata.digit``, so
one grammar covers them all. How ``.``, ``,`` and spaces are read is documented on
``extract_number``.
"""

from __future__ import annotations

import re
import unicodedata

# "The answer is" is the marker the MGSM chain-of-thought exemplars end with.
_MARKER = re.compile(r"the\s+answer\s+is", re.IGNORECASE)

# Group separators that are spaces: ASCII space, no-break, thin, narrow no-break.
_SPACES = " \u00a0\u2009\u202f"

# One number, after every Nd digit has been mapped to ASCII. The alternatives are
# tried in order; each grouped form needs a first group of 1-3 digits that does not
# start with 0, then groups of exactly 3 digits (Indian lakh grouping 1,00,000 too).
_NUMBER = re.compile(
    r"(?P<sign>(?<!\w)[-+\u2212])?"
    r"(?:"
    r"(?P<comma>[1-9][0-9]{0,2}(?:,[0-9]{3})+|[1-9][0-9]?(?:,[0-9]{2})+,[0-9]{3})(?:\.(?P<comma_frac>[0-9]+))?"
    r"|(?P<dot>[1-9][0-9]{0,2}(?:\.[0-9]{3})+)(?:,(?P<dot_frac>[0-9]+))?"
    rf"|(?P<space>[1-9][0-9]{{0,2}}(?:[{_SPACES}][0-9]{{3}})+)(?:[.,](?P<space_frac>[0-9]+))?"
    r"|(?P<arabic>[1-9][0-9]{0,2}(?:\u066c[0-9]{3})+)(?:[\u066b.](?P<arabic_frac>[0-9]+))?"
    r"|(?P<plain>[0-9]+)(?:[.,\u066b](?P<plain_frac>[0-9]+))?"
    r")(?![0-9])")

_GROUP_SEPARATORS = ",." + _SPACES + "\u066c"


def _ascii_digits(text: str) -> str:
  """Maps every decimal digit of any script (category Nd) to its ASCII digit; one char for one."""
  return "".join(str(unicodedata.digit(ch)) if not ch.isascii() and unicodedata.category(ch) == "Nd" else ch
                 for ch in text)


def _value(match: re.Match) -> float:
  """The float a ``_NUMBER`` match stands for."""
  for kind in ("comma", "dot", "space", "arabic", "plain"):
    whole = match.group(kind)
    if whole is not None:
      digits = "".join(ch for ch in whole if ch not in _GROUP_SEPARATORS)
      frac = match.group(f"{kind}_frac")
      value = float(f"{digits}.{frac}" if frac else digits)
      return -value if match.group("sign") in ("-", "\u2212") else value
  raise AssertionError("a _NUMBER match always has one alternative")


def extract_number(text: str) -> float | None:
  """The numeric answer in a generated text.

  Which number: the first number after the last "The answer is" (case-insensitive);
  when there is no such marker, or no number follows the last one, the last number
  in the text.

  How a number is read (after digits of every script are mapped to 0-9):

  * A sign ``+``, ``-`` or ``−`` (U+2212) counts only right before the digits and not
    after a letter or digit, so "5-3" and "COVID-19" give no negative number.
  * Group separators are ``,``, ``.``, the Arabic ``٬`` (U+066C), and spaces (ASCII
    space, U+00A0, U+2009, U+202F). A separator is read as grouping only in a group
    pattern: a first group of 1-3 digits not starting with 0, then groups of exactly
    3 digits ("80,000", "80.000", "1 234 567", "٨٠٬٠٠٠"; Indian "1,00,000" too).
  * Decimal separators are ``.``, ``,`` and the Arabic ``٫`` (U+066B). When both ``.``
    and ``,`` appear, the last one is the decimal separator ("1,234.5" and "1.234,5"
    are both 1234.5). A single ``.`` or ``,`` followed by exactly 3 digits in a group
    pattern is a thousands separator ("3.125" is 3125, as in German; "0.125" is a
    decimal since a group never starts with 0); otherwise it is decimal ("1,5" is 1.5).
  * A space separates groups only before exactly 3 digits, so "3 apples" stays 3,
    but "5 100-page books" reads 5100: the price of reading French "80 000".
  * Currency signs, units and a trailing sentence dot are not part of the number
    ("$80,000" is 80000, "70000." is 70000). Fractions such as "1/2" are not read.

  Args:
    text: generated text in any language and script.

  Returns:
    The number as a float (18 gives 18.0), or None when the text holds no number.
  """
  normal = _ascii_digits(text)
  markers = list(_MARKER.finditer(normal))
  if markers:
    after = _NUMBER.search(normal, markers[-1].end())
    if after is not None:
      return _value(after)
  last = None
  for last in _NUMBER.finditer(normal):
    pass
  return None if last is None else _value(last)


def parse_number(text: str) -> float | None:
  """Reads a text that is exactly one number (surrounding spaces allowed), as ``extract_number`` reads numbers.

  Args:
    text: a reference answer such as "18", "1,000" or "-2.5".

  Returns:
    The number as a float, or None when the text is anything but one number.
  """
  match = _NUMBER.fullmatch(_ascii_digits(text).strip())
  return None if match is None else _value(match)
