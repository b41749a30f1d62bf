"""``polyglot-jax data instruct``: labelled and parallel evaluation-format data as instruction records.

Parallel text (FLORES layout) becomes translation instructions in both
directions between every language and a pivot; multiple-choice items
(XCOPA, XNLI, XStoryCloze, Belebele) become the context with its choices
listed, answered by the right choice's text. Output records are the
``instruction`` record kind: {"instruction", "input", "output", "lang"}.

The instruction wording is English for every example (``wording="english"``,
as xP3) or in the example's own language (``wording="native"``, as xP3mt,
whose prompts were machine-translated; these are written by hand). A
translation record's language is its non-pivot side, in both directions, so
a native wording is that language's, naming both languages in it. Languages
without a native wording (or a language name that wording lacks) get the
English one, and every such record is counted and reported, never silently.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Iterable, Sequence

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError, DataError

WORDINGS = ("english", "native")
KINDS = ("translation", "choice")
TASKS = ("flores", "xcopa", "xnli", "xstorycloze", "belebele")
ENGLISH = {
    "translation": "Translate the following sentences from {src} to {tgt}.",
    "choice": "Choose the correct option for the text below.",
}

# Native wordings, keyed by ISO 639-3 code. {src} / {tgt} are filled with the
# forms of NATIVE_NAMES[lang][code] (source form, target form): the case or
# preposition each language's grammar puts on a language name there.
NATIVE = {
    "fra": ("Traduisez les phrases suivantes {src} {tgt}.",
            "Choisissez la bonne option pour le texte ci-dessous."),
    "deu": ("Übersetze die folgenden Sätze aus dem {src} ins {tgt}.",
            "Wähle die richtige Option für den folgenden Text."),
    "spa": ("Traduce las siguientes oraciones del {src} al {tgt}.", "Elige la opción correcta para el siguiente texto."),
    "ita": ("Traduci le seguenti frasi {src} {tgt}.", "Scegli l'opzione corretta per il testo seguente."),
    "rus": ("Переведите следующие предложения с {src} на {tgt}.",
            "Выберите правильный вариант для приведённого ниже текста."),
    "tur": ("Aşağıdaki cümleleri {src} {tgt} çevirin.", "Aşağıdaki metin için doğru seçeneği seçin."),
    "zho": ("请将以下句子从{src}翻译成{tgt}。", "请为下面的文本选择正确的选项。"),
    "hin": ("निम्नलिखित वाक्यों का {src} से {tgt} में अनुवाद करें।", "नीचे दिए गए पाठ के लिए सही विकल्प चुनें।"),
    "ben": ("নিচের বাক্যগুলো {src} ভাষা থেকে {tgt} ভাষায় অনুবাদ করুন।", "নিচের লেখাটির জন্য সঠিক বিকল্পটি বেছে নিন।"),
    "tha": ("แปลประโยคต่อไปนี้จาก{src}เป็น{tgt}", "เลือกตัวเลือกที่ถูกต้องสำหรับข้อความด้านล่าง"),
}

# Language names as each wording language writes them, in the order of _NAMED.
_NAMED = ("eng", "fra", "deu", "spa", "ita", "rus", "tur", "zho", "hin", "ben", "tha")
_NAMES = {
    "fra": "anglais français allemand espagnol italien russe turc chinois hindi bengali thaï",
    "deu": "Englisch Französisch Deutsch Spanisch Italienisch Russisch Türkisch Chinesisch Hindi Bengalisch "
           "Thailändisch",
    "spa": "inglés francés alemán español italiano ruso turco chino hindi bengalí tailandés",
    "ita": "inglese francese tedesco spagnolo italiano russo turco cinese hindi bengalese thailandese",
    "rus": "английский французский немецкий испанский итальянский русский турецкий китайский хинди бенгальский "
           "тайский",
    "tur": "İngilizce Fransızca Almanca İspanyolca İtalyanca Rusça Türkçe Çince Hintçe Bengalce Tayca",
    "zho": "英语 法语 德语 西班牙语 意大利语 俄语 土耳其语 中文 印地语 孟加拉语 泰语",
    "hin": "अंग्रेज़ी फ़्रेंच जर्मन स्पेनिश इतालवी रूसी तुर्की चीनी हिन्दी बांग्ला थाई",
    "ben": "ইংরেজি ফরাসি জার্মান স্প্যানিশ ইতালীয় রুশ তুর্কি চীনা হিন্দি বাংলা থাই",
    "tha": "ภาษาอังกฤษ ภาษาฝรั่งเศส ภาษาเยอรมัน ภาษาสเปน ภาษาอิตาลี ภาษารัสเซีย ภาษาตุรกี ภาษาจีน ภาษาฮินดี "
           "ภาษาเบงกาลี ภาษาไทย",
}


def _forms(lang: str, name: str) -> tuple[str, str]:
  """(source form, target form) of a language name in ``lang``'s translation wording."""
  if lang == "fra":  # "de l'anglais" / "du français" → "en anglais".
    return (f"de l'{name}" if name[0] in "aeiouh" else f"du {name}"), f"en {name}"
  if lang == "ita":  # "dall'inglese" / "dallo spagnolo" / "dal tedesco" → "in inglese".
    if name[0] in "aeiouh":
      src = f"dall'{name}"
    elif name[0] == "z" or (name[0] == "s" and name[1] not in "aeiou"):
      src = f"dallo {name}"
    else:
      src = f"dal {name}"
    return src, f"in {name}"
  if lang == "deu":  # "aus dem Englischen ins Deutsche"; "Hindi" does not inflect.
    return (f"{name}en", f"{name}e") if name.endswith("sch") else (name, name)
  if lang == "rus":  # "с английского на русский"; "хинди" does not inflect.
    return (name[:-2] + "ого", name) if name.endswith("ий") else (name, name)
  if lang == "tur":  # Ablative and dative by vowel harmony: "İngilizceden Türkçeye".
    back = name[-1] == "a"
    return name + ("dan" if back else "den"), name + ("ya" if back else "ye")
  return name, name


NATIVE_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    lang: {code: _forms(lang, name) for code, name in zip(_NAMED, names.split())} for lang, names in _NAMES.items()
}


def _key(code: str) -> str | None:
  """The ISO 639-3 code of ``code``, or None when the registry does not know it."""
  try:
    return langs.resolve(code)
  except langs.UnknownLanguageError:
    return None


def _english_name(code: str) -> str:
  key = _key(code)
  if key is None:
    raise ConfigError(f"unknown language code '{code}' in a translation pair; the English wording names languages "
                      "through polyglot_jax.data.languages (register it there, or rename the file)")
  return langs.REGISTRY[key].name


def _check_wording(wording: str) -> None:
  if wording not in WORDINGS:
    raise ConfigError(f"--wording '{wording}' is unknown; use one of {', '.join(WORDINGS)}")


def instruction_wording(kind: str, lang: str, wording: str = "english", *, src: str | None = None,
                        tgt: str | None = None, fallbacks: collections.Counter | None = None) -> str:
  """The instruction text of one record.

  Args:
    kind: "translation" (needs ``src`` and ``tgt``) or "choice".
    lang: the example's language (any registry alias); picks the native wording.
    wording: "english" (every example worded in English) or "native" (in ``lang``).
    src: source language code of a translation.
    tgt: target language code of a translation.
    fallbacks: counts (kind, lang) of native requests answered in English;
      without it each such request is logged as a warning.

  Returns:
    The instruction, e.g. "Translate the following sentences from French to English."

  Raises:
    ConfigError: an unknown kind or wording, a translation without src/tgt, or
      (English wording) a language the registry does not know.
  """
  _check_wording(wording)
  if kind not in KINDS:
    raise ConfigError(f"instruction kind '{kind}' is unknown; kinds: {', '.join(KINDS)}")
  if kind == "translation" and not (src and tgt):
    raise ConfigError("a translation instruction needs src= and tgt= language codes")
  if wording == "native":
    text = _native(kind, _key(lang), src, tgt)
    if text is not None:
      return text
    if fallbacks is None:
      logging.warning("no native %s wording for language '%s'; used the English one", kind, lang)
    else:
      fallbacks[(kind, lang)] += 1
  if kind == "translation":
    return ENGLISH[kind].format(src=_english_name(src), tgt=_english_name(tgt))
  return ENGLISH[kind]


def _native(kind: str, key: str | None, src: str | None, tgt: str | None) -> str | None:
  if key == "eng":
    return instruction_wording(kind, "eng", "english", src=src, tgt=tgt)
  if key not in NATIVE:
    return None
  translation, choice = NATIVE[key]
  if kind == "choice":
    return choice
  names = NATIVE_NAMES[key]
  src_forms, tgt_forms = names.get(_key(src)), names.get(_key(tgt))
  if src_forms is None or tgt_forms is None:
    return None
  return translation.format(src=src_forms[0], tgt=tgt_forms[1])


def _log_fallbacks(fallbacks: collections.Counter) -> None:
  for (kind, lang), n in sorted(fallbacks.items()):
    logging.warning("no native %s wording for language '%s' (%d records): used the English one", kind, lang, n)


def _find_pivot(codes: Iterable[str], pivot: str | None) -> str:
  """The file code in ``codes`` that is ``pivot`` (any alias; English when None)."""
  codes = list(codes)
  want = _key(pivot) if pivot else "eng"
  for code in codes:
    if code == pivot or (want is not None and _key(code) == want):
      return code
  what = f"pivot '{pivot}'" if pivot else "an English pivot"
  raise ConfigError(f"parallel text has no file for {what} (languages: {', '.join(codes)}); "
                    "pass --pivot with one of them")


def translation_records(parallel: dict[str, list[str]], *, pivot: str | None = None, both_directions: bool = True,
                        wording: str = "english", fallbacks: collections.Counter | None = None) -> list[dict]:
  """Translation instructions between every language and the pivot, from line-aligned text.

  Args:
    parallel: {language code: sentences}, line i the same sentence everywhere
      (``formats.read_parallel``'s result).
    pivot: the language every other one is paired with (a code of ``parallel``
      or an alias of one); by default the English one.
    both_directions: also write pivot → language, not only language → pivot.
    wording: "english" or "native" (the non-pivot language's wording).
    fallbacks: counts native requests answered in English, per (kind, lang);
      logged here when not given.

  Returns:
    Records {"instruction", "input" (source sentence), "output" (target
    sentence), "lang" (the non-pivot language), "src_lang", "tgt_lang"}; lines
    blank on either side are left out.
  """
  _check_wording(wording)
  pivot_code = _find_pivot(parallel, pivot)
  counter = collections.Counter() if fallbacks is None else fallbacks
  out, blank = [], 0
  for code, sentences in parallel.items():
    if code == pivot_code:
      continue
    directions = [(code, pivot_code)] + ([(pivot_code, code)] if both_directions else [])
    for src, tgt in directions:
      instruction = instruction_wording("translation", code, wording, src=src, tgt=tgt, fallbacks=counter)
      for source, target in zip(parallel[src], parallel[tgt]):
        if not source.strip() or not target.strip():
          blank += 1
          continue
        out.append({"instruction": instruction, "input": source.strip(), "output": target.strip(), "lang": code,
                    "src_lang": src, "tgt_lang": tgt})
  if blank:
    logging.info("translation records: left out %d sentence pairs with a blank side", blank)
  if fallbacks is None:
    _log_fallbacks(counter)
  return out


def choice_records(items: Sequence, *, wording: str = "english",
                   fallbacks: collections.Counter | None = None) -> list[dict]:
  """Multiple-choice items as instruction records.

  Args:
    items: ``formats.Choice`` items (XCOPA, XNLI, XStoryCloze, Belebele readers).
    wording: "english" or "native" (the item's language).
    fallbacks: counts native requests answered in English, per (kind, lang);
      logged here when not given.

  Returns:
    Records {"instruction": the wording, "input": the context, then the choices
    one a line as "A. ...", "B. ...", "output": the right choice's text, "lang",
    "id"}.
  """
  _check_wording(wording)
  counter = collections.Counter() if fallbacks is None else fallbacks
  out = []
  for item in items:
    listed = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(item.choices))
    out.append({"instruction": instruction_wording("choice", item.lang, wording, fallbacks=counter),
                "input": f"{item.context}\n{listed}", "output": item.choices[item.label], "lang": item.lang,
                "id": item.id})
  if fallbacks is None:
    _log_fallbacks(counter)
  return out


def parse_tasks(specs: Sequence[str]) -> list[tuple[str, str]]:
  """(task, path) of each ``TASK=PATH`` flag value."""
  out = []
  for spec in specs:
    task, sep, path = spec.partition("=")
    if not sep or not path:
      raise ConfigError(f"--task '{spec}' is not TASK=PATH; e.g. --task flores=data/flores200/devtest")
    if task not in TASKS:
      raise ConfigError(f"--task '{task}' cannot become instruction records; tasks: {', '.join(TASKS)}")
    out.append((task, path))
  return out


def build(tasks: Sequence[tuple[str, str]], *, wording: str = "english", pivot: str | None = None,
          both_directions: bool = True) -> tuple[list[dict], dict]:
  """Instruction records of every (task, path), read with the ``eval.formats`` readers.

  Args:
    tasks: (task name in ``TASKS``, file or folder) pairs.
    wording: "english" or "native".
    pivot: the translation pivot (default: the English file).
    both_directions: translation in both directions.

  Returns:
    (records, report): report holds "languages" {task: {lang: n}}, "directions"
    {"src->tgt": n} and "fallbacks" {"kind:lang": n}.
  """
  from polyglot_jax.eval import formats
  _check_wording(wording)
  fallbacks: collections.Counter = collections.Counter()
  records, per_lang, directions = [], {}, collections.Counter()
  for task, path in tasks:
    if task == "flores":
      new = translation_records(formats.read_parallel(path), pivot=pivot, both_directions=both_directions,
                                wording=wording, fallbacks=fallbacks)
      directions.update(f"{r['src_lang']}->{r['tgt_lang']}" for r in new)
    else:
      new = choice_records(formats.TASK_FORMATS[task](path), wording=wording, fallbacks=fallbacks)
    counts = per_lang.setdefault(task, collections.Counter())
    counts.update(r["lang"] for r in new)
    records += new
  report = {"languages": {t: dict(c) for t, c in per_lang.items()}, "directions": dict(directions),
            "fallbacks": {f"{kind}:{lang}": n for (kind, lang), n in sorted(fallbacks.items())}}
  return records, report


def write(records: list[dict], out: str) -> None:
  """Writes records as JSONL (UTF-8, one object a line)."""
  if not records:
    raise DataError(f"no instruction records to write to {out}; the --task inputs held no usable items")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def format_report(report: dict, wording: str) -> str:
  """Counts per task and language, per translation direction, and the English fallbacks."""
  lines = [f"wording: {wording}"]
  for task, counts in report["languages"].items():
    lines.append(f"{task}: " + ", ".join(f"{lang} {n}" for lang, n in sorted(counts.items()))
                 + f" (total {sum(counts.values())})")
  if report["directions"]:
    lines.append("directions: " + ", ".join(f"{d} {n}" for d, n in sorted(report["directions"].items())))
  for key, n in report["fallbacks"].items():
    kind, lang = key.split(":", 1)
    lines.append(f"note: no native {kind} wording for '{lang}' ({n} records): used the English one")
  return "\n".join(lines)
