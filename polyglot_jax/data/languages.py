"""The language registry: one place that knows codes, scripts and aliases.

Codes are ISO 639-3 (macrolanguage codes where corpora use them, e.g. ``zho``
and ``ara``); scripts are ISO 15924. Every user-facing command resolves what
it is given through ``resolve``, so ``zh``, ``zh-Hans``, ``cmn`` and ``zho``
are one language, and an unknown code is an error that names it.
"""

from __future__ import annotations

import dataclasses
from polyglot_jax.errors import UnknownLanguageError  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Language:
  code: str  # ISO 639-3.
  script: str  # ISO 15924.
  name: str
  family: str
  aliases: tuple[str, ...] = ()
  tier: str = "low"  # Resource tier: high | mid | low.
  tfds_name: str = ""  # Config name in TFDS c4/multilingual, if mC4 has it.


# The 101 languages of mC4 (Xue et al. 2021), keyed by their TFDS
# ``c4/multilingual`` config name. Tier is coarse, by mC4 size: high (the
# ~30 largest), mid, low. Fields: tfds name, ISO 639-3, ISO 15924, name,
# family, tier, extra aliases (ISO 639-1 codes and the TFDS name are aliases
# of every entry already).
_MC4 = """
af afr Latn Afrikaans Indo-European mid
am amh Ethi Amharic Afro-Asiatic low
ar ara Arab Arabic Afro-Asiatic high arb
az aze Latn Azerbaijani Turkic mid azj
be bel Cyrl Belarusian Indo-European mid
bg bul Cyrl Bulgarian Indo-European high
bn ben Beng Bengali Indo-European mid
ca cat Latn Catalan Indo-European mid
ceb ceb Latn Cebuano Austronesian low
co cos Latn Corsican Indo-European low
cs ces Latn Czech Indo-European high cze
cy cym Latn Welsh Indo-European mid wel
da dan Latn Danish Indo-European high
de deu Latn German Indo-European high ger
el ell Grek Greek Indo-European high gre
en eng Latn English Indo-European high
eo epo Latn Esperanto Constructed mid
es spa Latn Spanish Indo-European high
et est Latn Estonian Uralic mid ekk
eu eus Latn Basque Isolate mid baq
fa fas Arab Persian Indo-European high per,pes
fi fin Latn Finnish Uralic high
fil fil Latn Filipino Austronesian mid tl,tgl
fr fra Latn French Indo-European high fre
fy fry Latn Western-Frisian Indo-European low
ga gle Latn Irish Indo-European low
gd gla Latn Scottish-Gaelic Indo-European low
gl glg Latn Galician Indo-European mid
gu guj Gujr Gujarati Indo-European mid
ha hau Latn Hausa Afro-Asiatic low
haw haw Latn Hawaiian Austronesian low
hi hin Deva Hindi Indo-European high
hmn hmn Latn Hmong Hmong-Mien low
ht hat Latn Haitian-Creole Creole low
hu hun Latn Hungarian Uralic high
hy hye Armn Armenian Indo-European mid arm
id ind Latn Indonesian Austronesian high
ig ibo Latn Igbo Niger-Congo low
is isl Latn Icelandic Indo-European mid ice
it ita Latn Italian Indo-European high
iw heb Hebr Hebrew Afro-Asiatic mid he
ja jpn Jpan Japanese Japonic high
jv jav Latn Javanese Austronesian low
ka kat Geor Georgian Kartvelian mid geo
kk kaz Cyrl Kazakh Turkic mid
km khm Khmr Khmer Austroasiatic mid
kn kan Knda Kannada Dravidian mid
ko kor Kore Korean Koreanic high
ku kur Latn Kurdish Indo-European low kmr
ky kir Cyrl Kyrgyz Turkic mid
la lat Latn Latin Indo-European mid
lb ltz Latn Luxembourgish Indo-European mid
lo lao Laoo Lao Kra-Dai low
lt lit Latn Lithuanian Indo-European mid
lv lav Latn Latvian Indo-European mid lvs
mg mlg Latn Malagasy Austronesian low plt
mi mri Latn Maori Austronesian low mao
mk mkd Cyrl Macedonian Indo-European mid mac
ml mal Mlym Malayalam Dravidian mid
mn mon Cyrl Mongolian Mongolic mid khk
mr mar Deva Marathi Indo-European mid
ms msa Latn Malay Austronesian mid may,zsm
mt mlt Latn Maltese Afro-Asiatic low
my mya Mymr Burmese Sino-Tibetan mid bur
ne nep Deva Nepali Indo-European mid npi
nl nld Latn Dutch Indo-European high dut
no nor Latn Norwegian Indo-European high nb,nob,nn,nno
ny nya Latn Chichewa Niger-Congo low
pa pan Guru Punjabi Indo-European low
pl pol Latn Polish Indo-European high
ps pus Arab Pashto Indo-European low pbt
pt por Latn Portuguese Indo-European high
ro ron Latn Romanian Indo-European high rum
ru rus Cyrl Russian Indo-European high
sd snd Arab Sindhi Indo-European low
si sin Sinh Sinhala Indo-European mid
sk slk Latn Slovak Indo-European mid slo
sl slv Latn Slovenian Indo-European mid
sm smo Latn Samoan Austronesian low
sn sna Latn Shona Niger-Congo low
so som Latn Somali Afro-Asiatic low
sq sqi Latn Albanian Indo-European mid alb,als
sr srp Cyrl Serbian Indo-European mid
st sot Latn Sesotho Niger-Congo low
su sun Latn Sundanese Austronesian low
sv swe Latn Swedish Indo-European high
sw swa Latn Swahili Niger-Congo mid swh
ta tam Taml Tamil Dravidian mid
te tel Telu Telugu Dravidian mid
tg tgk Cyrl Tajik Indo-European mid
th tha Thai Thai Kra-Dai high
tr tur Latn Turkish Turkic high
uk ukr Cyrl Ukrainian Indo-European high
ur urd Arab Urdu Indo-European mid
uz uzb Latn Uzbek Turkic mid uzn
vi vie Latn Vietnamese Austroasiatic high
xh xho Latn Xhosa Niger-Congo low
yi yid Hebr Yiddish Indo-European low
yo yor Latn Yoruba Niger-Congo low
zh zho Hans Chinese Sino-Tibetan high chi,cmn,zh-cn,zh-hans,zh-hant,zh-tw
zu zul Latn Zulu Niger-Congo low
"""


def _parse_mc4() -> list[Language]:
  out = []
  for line in _MC4.strip().splitlines():
    parts = line.split()
    tfds, code, script, name, family, tier = parts[:6]
    extra = tuple(parts[6].split(",")) if len(parts) > 6 else ()
    out.append(Language(code, script, name.replace("-", " "), family.replace("-", " "),
                        aliases=(tfds,) + extra, tier=tier, tfds_name=tfds))
  return out


_LANGUAGES = _parse_mc4()
MC4_LANGUAGES = tuple(lang.code for lang in _LANGUAGES)
# Synthetic languages of the project's own testbeds. ``qen`` (ISO 639-3 local-use range qaa-qtz):
# English-Clone, English text with every character moved to the Private Use Area (data/clone.py).
_LANGUAGES.append(Language("qen", "Qaaa", "English-Clone", "Synthetic", aliases=("en-clone", "eng-clone")))

REGISTRY: dict[str, Language] = {lang.code: lang for lang in _LANGUAGES}
_ALIASES: dict[str, str] = {}
for _lang in _LANGUAGES:
  _ALIASES[_lang.code] = _lang.code
  for _alias in _lang.aliases:
    _ALIASES[_alias] = _lang.code




def resolve(code: str) -> str:
  """Canonical ISO 639-3 code for ``code`` or one of its aliases.

  BCP-47 style tags resolve through their primary subtag when the whole tag
  is not an alias (``de-AT`` → ``deu``, ``pt_BR`` → ``por``).
  """
  key = code.strip().lower().replace("_", "-")
  if key in _ALIASES:
    return _ALIASES[key]
  primary = key.split("-")[0]
  if primary in _ALIASES:
    return _ALIASES[primary]
  raise UnknownLanguageError(
      f"unknown language code '{code}'; use an ISO 639-1/639-3 code of the {len(REGISTRY)} registered "
      "languages (polyglot_jax.data.languages.REGISTRY) or register it with polyglot_jax.data.languages.register")


def register(language: Language) -> None:
  """Adds a user language (and its aliases) to the registry."""
  REGISTRY[language.code] = language
  _ALIASES[language.code] = language.code
  for alias in language.aliases:
    _ALIASES[alias.lower()] = language.code


def get(code: str) -> Language:
  return REGISTRY[resolve(code)]
