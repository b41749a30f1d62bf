"""The language registry: one place that knows codes, scripts and aliases.

Codes are ISO 639-3 (macrolanguage codes where corpora use them, e.g. ``zho``
and ``ara``); scripts are ISO 15924. Every user-facing command resolves what
it is given through ``resolve``, so ``zh``, ``zh-Hans``, ``cmn`` and ``zho``
are one language, and an unknown code is an error that names it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Language:
  code: str  # ISO 639-3.
  script: str  # ISO 15924.
  name: str
  family: str
  aliases: tuple[str, ...] = ()


_LANGUAGES = [
    Language("eng", "Latn", "English", "Indo-European", ("en", "en-us", "en-gb")),
    Language("deu", "Latn", "German", "Indo-European", ("de", "ger")),
    Language("fra", "Latn", "French", "Indo-European", ("fr", "fre")),
    Language("spa", "Latn", "Spanish", "Indo-European", ("es",)),
    Language("rus", "Cyrl", "Russian", "Indo-European", ("ru",)),
    Language("ukr", "Cyrl", "Ukrainian", "Indo-European", ("uk",)),
    Language("ell", "Grek", "Greek", "Indo-European", ("el", "gre")),
    Language("ara", "Arab", "Arabic", "Afro-Asiatic", ("ar", "arb")),
    Language("heb", "Hebr", "Hebrew", "Afro-Asiatic", ("he", "iw")),
    Language("hin", "Deva", "Hindi", "Indo-European", ("hi",)),
    Language("zho", "Hans", "Chinese", "Sino-Tibetan", ("zh", "zh-hans", "zh-cn", "cmn", "chi")),
    Language("jpn", "Jpan", "Japanese", "Japonic", ("ja",)),
    Language("kor", "Kore", "Korean", "Koreanic", ("ko",)),
    Language("tha", "Thai", "Thai", "Kra-Dai", ("th",)),
]

REGISTRY: dict[str, Language] = {lang.code: lang for lang in _LANGUAGES}
_ALIASES: dict[str, str] = {}
for _lang in _LANGUAGES:
  _ALIASES[_lang.code] = _lang.code
  for _alias in _lang.aliases:
    _ALIASES[_alias] = _lang.code


class UnknownLanguageError(ValueError):
  pass


def resolve(code: str) -> str:
  """Canonical ISO 639-3 code for ``code`` or one of its aliases."""
  key = code.strip().lower().replace("_", "-")
  if key in _ALIASES:
    return _ALIASES[key]
  raise UnknownLanguageError(
      f"unknown language code '{code}'; known codes: {', '.join(sorted(REGISTRY))} "
      "(register new ones with polyglot_jax.data.languages.register)")


def register(language: Language) -> None:
  """Adds a user language (and its aliases) to the registry."""
  REGISTRY[language.code] = language
  _ALIASES[language.code] = language.code
  for alias in language.aliases:
    _ALIASES[alias.lower()] = language.code


def get(code: str) -> Language:
  return REGISTRY[resolve(code)]
