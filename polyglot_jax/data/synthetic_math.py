"""A synthetic multilingual math testbed: parallel arithmetic word problems with worked answers.

Every item is drawn once (operation, numbers, which name, partner and object)
and then written in each language from this module's own templates, so one
item id is the same problem in every language: the same numbers, the same
steps, the same answer; only the words (and the people's names, localized
per language at the same index and gender) change. Numbers are ASCII digits
in every script.

Each answer comes with a short chain of thought in the item's language that
ends with the English marker "The answer is N." (as the MGSM English
exemplars do): ``eval.answers.extract_number`` reads the first number after
that marker, so a model trained on these answers is scored by the marker
rule in every language even when it writes more numbers afterwards, and the
answer is also the last number, so the last-number fallback agrees.

``write_splits`` writes what QAlign (question translation, then English
question → answer) and MAPO (parallel questions) train on, a multilingual
SFT baseline, held-out MGSM-layout test files and few-shot exemplars.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections import Counter
from typing import Sequence

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError

# Operations: one step, then two steps (a + b - c, a * b + c).
OPS = ("add", "sub", "mul", "add_sub", "mul_add")
MARKER = "The answer is {}."

# Number ranges per difficulty: (additive operands, multiplier a, multiplicand b, added/removed c).
DIFFICULTY = {
    1: ((2, 20), (2, 5), (2, 10), (2, 10)),
    2: ((2, 100), (2, 12), (2, 20), (2, 50)),
    3: ((10, 1000), (2, 30), (2, 50), (2, 200)),
}


@dataclasses.dataclass(frozen=True)
class _Language:
  """One language's words: names and objects at aligned indices, question and CoT templates per op.

  Templates take ``{name}``, ``{name2}`` (and ``_gen``/``_dat`` case forms
  where the language inflects names), the bare numbers ``{a} {b} {c} {t} {r}``,
  counted phrases ``{A} {B} {C} {T} {R}`` ("5 apples", "5 яблок", "5个苹果"),
  ``{BOXES}`` (a boxes), the object's own forms (``{pl}``, ``{how}``, ``{How}``
  and whatever else its dict holds) and ``[[masc|fem]]`` choices by the
  gender of ``{name}``.
  """
  names: tuple[dict, ...]  # {"name": ..., optional case forms}; genders alternate f, m by index.
  objects: tuple[dict, ...]  # Forms of apples, eggs, balloons, bananas, mangoes, sweets (same order everywhere).
  box: dict  # Forms of "box".
  questions: dict  # op → question template.
  cots: dict  # op → chain-of-thought template (the marker is appended).


_GENDERS = ("f", "m", "f", "m", "f", "m")


def _counted_plural(n: int, forms: dict) -> str:
  return f"{n} {forms['pl']}"


def _counted_ru(n: int, forms: dict) -> str:
  one, few, many = forms["ru"]
  if n % 10 == 1 and n % 100 != 11:
    word = one
  elif 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
    word = few
  else:
    word = many
  return f"{n} {word}"


def _counted_zh(n: int, forms: dict) -> str:
  return f"{n}{forms['cl']}"


_EN = _Language(
    names=tuple({"name": n} for n in ("Anna", "Tom", "Lucy", "Sam", "Emma", "Jack")),
    objects=tuple({"pl": p, "how": f"how many {p}", "How": f"How many {p}"}
                  for p in ("apples", "eggs", "balloons", "bananas", "mangoes", "sweets")),
    box={"pl": "boxes", "one": "box"},
    questions={
        "add": "{name} has {A}. Then {name} buys another {B} at the market. {How} does {name} have now?",
        "sub": "{name} has {A} and gives {B} to {name2}. {How} does {name} have left?",
        "mul": "{name} has {BOXES}, and each box holds {B}. {How} does {name} have in all?",
        "add_sub": "{name} has {A}, buys another {B} and then gives {C} to {name2}. {How} does {name} have now?",
        "mul_add": "{name} has {BOXES} with {B} in each box, and another {C} on the table. {How} does {name} "
                   "have in total?",
    },
    cots={
        "add": "{name} starts with {A} and buys another {B}. {a} + {b} = {r}.",
        "sub": "{name} had {A} and gave away {B}. {a} - {b} = {r}.",
        "mul": "There are {BOXES} with {B} in each. {a} × {b} = {r}.",
        "add_sub": "After buying, {name} has {a} + {b} = {T}. After giving away {C}, [[he|she]] has "
                   "{t} - {c} = {R}.",
        "mul_add": "The boxes hold {a} × {b} = {T}. With the {C} on the table: {t} + {c} = {R}.",
    },
)

_FR = _Language(
    names=tuple({"name": n} for n in ("Marie", "Louis", "Camille", "Hugo", "Léa", "Paul")),
    objects=tuple({"pl": p, "how": f"combien {d}{p}", "How": f"Combien {d}{p}"}
                  for p, d in (("pommes", "de "), ("œufs", "d'"), ("ballons", "de "), ("bananes", "de "),
                               ("mangues", "de "), ("bonbons", "de "))),
    box={"pl": "boîtes", "one": "boîte"},
    questions={
        "add": "{name} a {A}. Ensuite, {name} achète {B} de plus au marché. {How} {name} a-t-[[il|elle]] "
               "maintenant ?",
        "sub": "{name} a {A} et donne {B} à {name2}. {How} reste-t-il à {name} ?",
        "mul": "{name} a {BOXES} et chaque boîte contient {B}. {How} {name} a-t-[[il|elle]] en tout ?",
        "add_sub": "{name} a {A}, en achète {b} de plus, puis donne {C} à {name2}. {How} {name} "
                   "a-t-[[il|elle]] maintenant ?",
        "mul_add": "{name} a {BOXES} contenant chacune {B}, et {C} de plus sur la table. {How} {name} "
                   "a-t-[[il|elle]] en tout ?",
    },
    cots={
        "add": "{name} avait {A} et en a acheté {b} de plus. {a} + {b} = {r}.",
        "sub": "{name} avait {A} et en a donné {b}. {a} - {b} = {r}.",
        "mul": "Il y a {BOXES} de {B} chacune. {a} × {b} = {r}.",
        "add_sub": "Après l'achat : {a} + {b} = {T}. Après le don de {C} : {t} - {c} = {R}.",
        "mul_add": "Dans les boîtes : {a} × {b} = {T}. Avec les {C} sur la table : {t} + {c} = {R}.",
    },
)

_DE = _Language(
    names=tuple({"name": n} for n in ("Lena", "Jonas", "Mia", "Felix", "Hanna", "Lukas")),
    objects=tuple({"pl": p, "how": f"wie viele {p}", "How": f"Wie viele {p}"}
                  for p in ("Äpfel", "Eier", "Luftballons", "Bananen", "Mangos", "Bonbons")),
    box={"pl": "Schachteln", "one": "Schachtel"},
    questions={
        "add": "{name} hat {A}. Dann kauft {name} auf dem Markt noch {B} dazu. {How} hat {name} jetzt?",
        "sub": "{name} hat {A} und gibt {name2} {B}. {How} hat {name} noch?",
        "mul": "{name} hat {BOXES}, und in jeder Schachtel sind {B}. {How} hat {name} insgesamt?",
        "add_sub": "{name} hat {A}, kauft noch {B} dazu und gibt dann {name2} {C}. {How} hat {name} jetzt?",
        "mul_add": "{name} hat {BOXES}, in jeder Schachtel sind {B}, und auf dem Tisch liegen noch {C}. "
                   "{How} hat {name} insgesamt?",
    },
    cots={
        "add": "{name} hatte {A} und hat {B} dazugekauft. {a} + {b} = {r}.",
        "sub": "{name} hatte {A} und hat {B} verschenkt. {a} - {b} = {r}.",
        "mul": "Es sind {BOXES} mit jeweils {B}. {a} × {b} = {r}.",
        "add_sub": "Nach dem Kauf: {a} + {b} = {T}. Nach dem Verschenken von {C}: {t} - {c} = {R}.",
        "mul_add": "In den Schachteln: {a} × {b} = {T}. Dazu die {C} auf dem Tisch: {t} + {c} = {R}.",
    },
)

_ES = _Language(
    names=tuple({"name": n} for n in ("Lucía", "Mateo", "Sofía", "Diego", "Elena", "Pablo")),
    objects=tuple({"pl": p, "how": f"cuánt{g}s {p}", "How": f"Cuánt{g}s {p}"}
                  for p, g in (("manzanas", "a"), ("huevos", "o"), ("globos", "o"), ("plátanos", "o"),
                               ("mangos", "o"), ("caramelos", "o"))),
    box={"pl": "cajas", "one": "caja"},
    questions={
        "add": "{name} tiene {A}. Luego compra {B} más en el mercado. ¿{How} tiene {name} ahora?",
        "sub": "{name} tiene {A} y le da {B} a {name2}. ¿{How} le quedan a {name}?",
        "mul": "{name} tiene {BOXES} y en cada caja hay {B}. ¿{How} tiene {name} en total?",
        "add_sub": "{name} tiene {A}, compra {B} más y luego le da {C} a {name2}. ¿{How} tiene {name} ahora?",
        "mul_add": "{name} tiene {BOXES}, en cada caja hay {B} y sobre la mesa hay {C} más. ¿{How} tiene "
                   "{name} en total?",
    },
    cots={
        "add": "{name} tenía {A} y compró {B} más. {a} + {b} = {r}.",
        "sub": "{name} tenía {A} y regaló {B}. {a} - {b} = {r}.",
        "mul": "Hay {BOXES} con {B} cada una. {a} × {b} = {r}.",
        "add_sub": "Después de comprar: {a} + {b} = {T}. Después de regalar {C}: {t} - {c} = {R}.",
        "mul_add": "En las cajas hay {a} × {b} = {T}. Sumando {C} de la mesa: {t} + {c} = {R}.",
    },
)

_RU = _Language(
    names=tuple({"name": n, "name_gen": g, "name_dat": d} for n, g, d in (
        ("Маша", "Маши", "Маше"), ("Иван", "Ивана", "Ивану"), ("Оля", "Оли", "Оле"),
        ("Петя", "Пети", "Пете"), ("Аня", "Ани", "Ане"), ("Дима", "Димы", "Диме"))),
    objects=tuple({"ru": forms, "gen_pl": forms[2], "how": f"сколько {forms[2]}", "How": f"Сколько {forms[2]}"}
                  for forms in (("яблоко", "яблока", "яблок"), ("яйцо", "яйца", "яиц"),
                                ("шарик", "шарика", "шариков"), ("банан", "банана", "бананов"),
                                ("манго", "манго", "манго"), ("конфета", "конфеты", "конфет"))),
    box={"ru": ("коробка", "коробки", "коробок")},
    questions={
        "add": "У {name_gen} {A}. Потом [[он|она]] покупает на рынке ещё {B}. {How} теперь у {name_gen}?",
        "sub": "У {name_gen} {A}. [[Он|Она]] отдаёт {B} {name2_dat}. {How} осталось у {name_gen}?",
        "mul": "У {name_gen} {BOXES}, и в каждой коробке {B}. {How} у {name_gen} всего?",
        "add_sub": "У {name_gen} {A}. [[Он|Она]] покупает ещё {B}, а потом отдаёт {C} {name2_dat}. "
                   "{How} теперь у {name_gen}?",
        "mul_add": "У {name_gen} {BOXES}, в каждой коробке {B}, и ещё {C} на столе. {How} у {name_gen} всего?",
    },
    cots={
        "add": "{name} купил[[|а]] ещё {B}. Складываем: {a} + {b} = {r}.",
        "sub": "{name} отдал[[|а]] {B}. Вычитаем: {a} - {b} = {r}.",
        "mul": "Умножаем число коробок на число {gen_pl} в каждой: {a} × {b} = {r}.",
        "add_sub": "После покупки: {a} + {b} = {t}. После того как {name} отдал[[|а]] {C}: {t} - {c} = {r}.",
        "mul_add": "В коробках: {a} × {b} = {t}. Вместе с теми, что на столе: {t} + {c} = {r}.",
    },
)

_ZH = _Language(
    names=tuple({"name": n} for n in ("小红", "小明", "小丽", "小刚", "小芳", "小华")),
    objects=tuple({"cl": cl, "how": f"多少{cl}", "How": f"多少{cl}"}
                  for cl in ("个苹果", "个鸡蛋", "个气球", "根香蕉", "个芒果", "颗糖")),
    box={"cl": "个盒子"},
    questions={
        "add": "{name}有{A}，后来又在市场上买了{B}。{name}现在一共有{how}？",
        "sub": "{name}有{A}，送给{name2}{B}。{name}还剩{how}？",
        "mul": "{name}有{BOXES}，每个盒子里有{B}。{name}一共有{how}？",
        "add_sub": "{name}有{A}，又买了{B}，然后送给{name2}{C}。{name}现在有{how}？",
        "mul_add": "{name}有{BOXES}，每个盒子里有{B}，桌上还有{C}。{name}一共有{how}？",
    },
    cots={
        "add": "{name}原来有{A}，又买了{B}。{a} + {b} = {r}。",
        "sub": "{name}原来有{A}，送出了{B}。{a} - {b} = {r}。",
        "mul": "{BOXES}，每个盒子里有{B}。{a} × {b} = {r}。",
        "add_sub": "买完后有{a} + {b} = {T}。送出{C}后剩下{t} - {c} = {R}。",
        "mul_add": "盒子里一共有{a} × {b} = {T}。加上桌上的{C}，一共{t} + {c} = {R}。",
    },
)

# Hindi: every object noun is masculine plural, so "कितने", "थे", "दिए", "बचे" agree for all of them.
_HI = _Language(
    names=tuple({"name": n} for n in ("सीता", "राम", "प्रिया", "अमन", "नेहा", "रवि")),
    objects=tuple({"pl": p, "how": f"कितने {p}", "How": f"कितने {p}"}
                  for p in ("सेब", "अंडे", "गुब्बारे", "केले", "आम", "लड्डू")),
    box={"pl": "डिब्बे", "one": "डिब्बा"},
    questions={
        "add": "{name} के पास {A} थे। फिर {name} ने बाज़ार से {B} और खरीदे। अब {name} के पास कुल {how} हैं?",
        "sub": "{name} के पास {A} थे। {name} ने {B} {name2} को दे दिए। अब {name} के पास {how} बचे?",
        "mul": "{name} के पास {BOXES} हैं और हर डिब्बे में {B} हैं। {name} के पास कुल {how} हैं?",
        "add_sub": "{name} के पास {A} थे। {name} ने {B} और खरीदे और फिर {C} {name2} को दे दिए। "
                   "अब {name} के पास {how} हैं?",
        "mul_add": "{name} के पास {BOXES} हैं, हर डिब्बे में {B} हैं, और मेज़ पर {C} और रखे हैं। "
                   "{name} के पास कुल {how} हैं?",
    },
    cots={
        "add": "{name} के पास पहले {A} थे और उसने {B} और खरीदे। {a} + {b} = {r}।",
        "sub": "{name} के पास {A} थे और उसने {B} दे दिए। {a} - {b} = {r}।",
        "mul": "{BOXES} हैं और हर डिब्बे में {B} हैं। {a} × {b} = {r}।",
        "add_sub": "खरीदने के बाद: {a} + {b} = {T}। {C} देने के बाद: {t} - {c} = {R}।",
        "mul_add": "डिब्बों में: {a} × {b} = {T}। मेज़ वाले {C} जोड़ने पर: {t} + {c} = {R}।",
    },
)

# Keyed by ISO 639-3 code; users name languages by any registry alias ("en", "eng", "zh-Hans").
LANGUAGES: dict[str, _Language] = {"eng": _EN, "fra": _FR, "deu": _DE, "spa": _ES, "rus": _RU, "zho": _ZH,
                                   "hin": _HI}
_COUNTED = {"rus": _counted_ru, "zho": _counted_zh}
DEFAULT_LANGUAGES = ("en", "fr", "de", "ru", "zh", "hi")


def _template_language(code: str) -> str:
  """The LANGUAGES key of a user's language code, or a ConfigError naming the supported ones."""
  try:
    key = langs.resolve(code)
  except langs.UnknownLanguageError:
    key = None
  if key not in LANGUAGES:
    raise ConfigError(f"synthetic math has no templates for language '{code}'; supported: "
                      f"{', '.join(sorted(LANGUAGES))} (or their ISO 639-1 codes en, fr, de, es, ru, zh, hi)")
  return key


def _draw(rng: random.Random, op: str, difficulty: int) -> tuple[int, ...]:
  """Operands of one problem; every operand, intermediate and result is ≥ 2 (plural nouns everywhere)."""
  (lo, hi), (ma_lo, ma_hi), (mb_lo, mb_hi), (c_lo, c_hi) = DIFFICULTY[difficulty]
  if op == "add":
    return rng.randint(lo, hi), rng.randint(lo, hi)
  if op == "sub":
    a = rng.randint(lo + 2, hi)
    return a, rng.randint(lo, a - 2) if a - 2 >= lo else 2
  if op == "mul":
    return rng.randint(ma_lo, ma_hi), rng.randint(mb_lo, mb_hi)
  if op == "add_sub":
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return a, b, rng.randint(c_lo, min(c_hi, a + b - 2))
  if op == "mul_add":
    return rng.randint(ma_lo, ma_hi), rng.randint(mb_lo, mb_hi), rng.randint(c_lo, c_hi)
  raise AssertionError(op)


def solve(op: str, operands: Sequence[int]) -> tuple[int, int | None]:
  """(answer, intermediate result of a two-step op or None) of one problem.

  Args:
    op: one of ``OPS``.
    operands: the numbers a, b (and c for two-step ops).

  Returns:
    The answer and, for two-step ops, the first step's result.
  """
  a, b, *rest = operands
  if op == "add":
    return a + b, None
  if op == "sub":
    return a - b, None
  if op == "mul":
    return a * b, None
  if op == "add_sub":
    return a + b - rest[0], a + b
  if op == "mul_add":
    return a * b + rest[0], a * b
  raise ConfigError(f"unknown operation '{op}'; operations: {', '.join(OPS)}")


_GENDER_CHOICE = re.compile(r"\[\[([^|\]]*)\|([^\]]*)\]\]")


def _render(lang_key: str, op: str, operands: Sequence[int], name_i: int, name2_i: int,
            obj_i: int) -> tuple[str, str]:
  """(question, chain of thought with the marker) of one problem in one language."""
  spec = LANGUAGES[lang_key]
  counted = _COUNTED.get(lang_key, _counted_plural)
  answer, step = solve(op, operands)
  a, b = operands[0], operands[1]
  c = operands[2] if len(operands) > 2 else 0
  obj = spec.objects[obj_i]
  name, name2 = spec.names[name_i], spec.names[name2_i]
  values = dict(obj, a=a, b=b, c=c, t=step or 0, r=answer, A=counted(a, obj), B=counted(b, obj),
                C=counted(c, obj), T=counted(step or 0, obj), R=counted(answer, obj), BOXES=counted(a, spec.box))
  values.update(name)
  values.update({f"name2{k[4:]}": v for k, v in name2.items()})
  masc = _GENDERS[name_i] == "m"

  def fill(template: str) -> str:
    template = _GENDER_CHOICE.sub(lambda m: m.group(1) if masc else m.group(2), template)
    return template.format(**values)

  return fill(spec.questions[op]), fill(spec.cots[op]) + " " + MARKER.format(answer)


def make_problems(n: int, languages: Sequence[str] = DEFAULT_LANGUAGES, *, seed: int = 0,
                  ops: Sequence[str] = OPS, difficulty: int = 2) -> list[dict]:
  """Parallel arithmetic word problems, ``n`` items written in every language.

  Items are drawn by a ``random.Random(seed)``: the same arguments give the
  same problems. No two items share an (op, operands) pair, so a split of the
  list holds out the arithmetic too, not just the wording.

  Args:
    n: number of items.
    languages: language codes (any registry alias of a language in ``LANGUAGES``);
      records keep the code as given.
    seed: random seed.
    ops: operations to draw from, uniformly (``OPS``).
    difficulty: 1, 2 or 3: the number ranges of ``DIFFICULTY``.

  Returns:
    Item-major records ``{"id", "lang", "question", "answer" (int), "cot",
    "op", "operands"}``: for each item, one record per language, in the order of
    ``languages``. ``cot`` ends with "The answer is N.".

  Raises:
    ConfigError: an unknown language, operation or difficulty, or more items
      than the number ranges hold.
  """
  keys = [_template_language(code) for code in languages]
  if not languages:
    raise ConfigError("synthetic math needs at least one language")
  bad = [op for op in ops if op not in OPS]
  if bad or not ops:
    raise ConfigError(f"unknown operation(s) {bad or '(none given)'}; operations: {', '.join(OPS)}")
  if difficulty not in DIFFICULTY:
    raise ConfigError(f"difficulty={difficulty!r}; use one of {sorted(DIFFICULTY)}")
  rng = random.Random(seed)
  seen: set = set()
  out, misses = [], 0
  while len(seen) < n:
    op = rng.choice(list(ops))
    operands = _draw(rng, op, difficulty)
    name_i = rng.randrange(len(_GENDERS))
    name2_i = (name_i + 1 + rng.randrange(len(_GENDERS) - 1)) % len(_GENDERS)
    obj_i = rng.randrange(len(_EN.objects))
    if (op, operands) in seen:
      misses += 1
      if misses > 100 * n + 1000:
        raise ConfigError(f"cannot draw {n} distinct problems at difficulty={difficulty} with ops={list(ops)}; "
                          "raise the difficulty, add operations or ask for fewer items")
      continue
    seen.add((op, operands))
    item_id = f"s{seed}-{len(seen) - 1:06d}"
    answer, _ = solve(op, operands)
    for code, key in zip(languages, keys):
      question, cot = _render(key, op, operands, name_i, name2_i, obj_i)
      out.append({"id": item_id, "lang": code, "question": question, "answer": answer, "cot": cot,
                  "op": op, "operands": list(operands)})
  return out


def _pick_exemplars(ids: list[str], ops_of: list[str], ops: list[str], n: int) -> list[str]:
  """The first training ids that cycle through ``ops`` in order (any id where an op has none left)."""
  picked: list[str] = []
  for k in range(min(n, len(ids))):
    want = ops[k % len(ops)]
    first_free = next(i for i in ids if i not in picked)
    picked.append(next((i for i, op in zip(ids, ops_of) if op == want and i not in picked), first_free))
  return picked


def _write_jsonl(path: str, records: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_splits(out_dir: str, *, n_train: int, n_test: int, languages: Sequence[str] = DEFAULT_LANGUAGES,
                 seed: int = 0, pivot: str = "en", ops: Sequence[str] = OPS, difficulty: int = 2,
                 n_exemplars: int = 4) -> dict[str, dict[str, int]]:
  """Writes the QAlign, MAPO and SFT training splits and held-out MGSM-layout test files.

  Files under ``out_dir`` (instruction records are the ``instruction`` record kind):

  * ``qalign_stage1.jsonl``: question translation, every non-pivot language X →
    pivot: {"instruction": "Translate the following sentences from X to English.",
    "input": question in X, "output": pivot question, "lang": X}.
  * ``qalign_stage2.jsonl``: pivot question → pivot CoT, lang = pivot.
  * ``sft_multilingual.jsonl``: question → CoT in every language.
  * ``parallel_questions.jsonl``: {"id", "lang", "question", "answer", "en_question",
    "cot", "en_cot"} for every non-pivot language ("en_*" hold the pivot's text).
  * ``exemplars_<lang>.jsonl``: few-shot {"question", "answer": CoT}, the same
    training items in every language, one of each op in turn.
  * ``test/mgsm_<lang>.tsv``: question<TAB>answer on held-out items (ids and
    (op, operands) disjoint from training), row i the same item in every language.
  * ``test/problems.jsonl``: the held-out items with ids, CoTs and operands.
  * ``manifest.json``: the arguments and the counts.

  Args:
    out_dir: output folder (created).
    n_train: training items (each in every language).
    n_test: held-out items.
    languages: language codes, as ``make_problems`` takes them.
    seed: random seed.
    pivot: the language questions are translated into; one of ``languages``.
    ops: operations.
    difficulty: number ranges (``DIFFICULTY``).
    n_exemplars: few-shot exemplars per language.

  Returns:
    {file name: {language: records}}.
  """
  languages = list(languages)
  pivot_key = _template_language(pivot)
  pivots = [code for code in languages if _template_language(code) == pivot_key]
  if not pivots:
    raise ConfigError(f"pivot '{pivot}' is not among --languages {','.join(languages)}; add it or pick another")
  pivot = pivots[0]
  if n_train < 1 or n_test < 0:
    raise ConfigError(f"n_train={n_train}, n_test={n_test}: need n_train >= 1 and n_test >= 0")
  from polyglot_jax.data.instruct import instruction_wording
  items = make_problems(n_train + n_test, languages, seed=seed, ops=ops, difficulty=difficulty)
  by_id: dict[str, dict[str, dict]] = {}
  for item in items:
    by_id.setdefault(item["id"], {})[item["lang"]] = item
  ids = list(by_id)
  train_ids, test_ids = ids[:n_train], ids[n_train:]
  others = [code for code in languages if code != pivot]

  splits: dict[str, list[dict]] = {k: [] for k in ("qalign_stage1.jsonl", "qalign_stage2.jsonl",
                                                  "sft_multilingual.jsonl", "parallel_questions.jsonl")}
  for item_id in train_ids:
    group, base = by_id[item_id], by_id[item_id][pivot]
    splits["qalign_stage2.jsonl"].append({"instruction": base["question"], "output": base["cot"], "lang": pivot})
    for code in languages:
      item = group[code]
      splits["sft_multilingual.jsonl"].append({"instruction": item["question"], "output": item["cot"],
                                               "lang": code})
    for code in others:
      item = group[code]
      splits["qalign_stage1.jsonl"].append({
          "instruction": instruction_wording("translation", code, "english", src=code, tgt=pivot),
          "input": item["question"], "output": base["question"], "lang": code})
      splits["parallel_questions.jsonl"].append({
          "id": item_id, "lang": code, "question": item["question"], "answer": item["answer"],
          "en_question": base["question"], "cot": item["cot"], "en_cot": base["cot"]})

  exemplar_ids = _pick_exemplars(train_ids, [by_id[i][pivot]["op"] for i in train_ids], list(ops), n_exemplars)
  for code in languages:
    splits[f"exemplars_{code}.jsonl"] = [{"question": by_id[i][code]["question"], "answer": by_id[i][code]["cot"]}
                                         for i in exemplar_ids]

  os.makedirs(os.path.join(out_dir, "test"), exist_ok=True)
  counts: dict[str, dict[str, int]] = {}
  for name, records in splits.items():
    _write_jsonl(os.path.join(out_dir, name), records)
    if name.startswith("exemplars_"):
      counts[name] = {name[len("exemplars_"):-len(".jsonl")]: len(records)}
    else:
      counts[name] = dict(Counter(r["lang"] for r in records))
  for code in languages:
    name = f"test/mgsm_{code}.tsv"
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      for item_id in test_ids:
        f.write(f"{by_id[item_id][code]['question']}\t{by_id[item_id][code]['answer']}\n")
    counts[name] = {code: len(test_ids)}
  _write_jsonl(os.path.join(out_dir, "test", "problems.jsonl"),
               [by_id[i][code] for i in test_ids for code in languages])
  counts["test/problems.jsonl"] = {code: len(test_ids) for code in languages}
  with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump({"n_train": n_train, "n_test": n_test, "languages": languages, "pivot": pivot, "seed": seed,
               "ops": list(ops), "difficulty": difficulty, "exemplar_ids": exemplar_ids, "counts": counts}, f,
              ensure_ascii=False, indent=2)
  return counts


def format_counts(counts: dict[str, dict[str, int]]) -> str:
  """A table of records per file and language."""
  languages = list(dict.fromkeys(code for per in counts.values() for code in per))
  width = max(len(name) for name in counts)
  lines = [f"{'file':<{width}} " + " ".join(f"{code:>6}" for code in languages) + f" {'total':>7}"]
  for name, per in counts.items():
    lines.append(f"{name:<{width}} " + " ".join(f"{per.get(code, 0):>6}" for code in languages)
                 + f" {sum(per.values()):>7}")
  return "\n".join(lines)
