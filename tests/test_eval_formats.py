"""Evaluation readers on tiny fixtures in the public layouts, and numeric answer extraction."""

import json
import pathlib

import pytest

from polyglot_jax.errors import DataError
from polyglot_jax.eval import formats
from polyglot_jax.eval.answers import extract_number, parse_number

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "eval"


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _jsonl(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
  return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _raises(call, *fragments: str) -> str:
  """Runs ``call``, expects one DataError line holding every fragment; returns the message."""
  with pytest.raises(DataError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, (fragment, message)
  return message


# ---------------------------------------------------------------------------
# extract_number / parse_number.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # en: plain, trailing sentence dot, currency with thousands, decimals.
    ("She earns 9 dollars a day, so 2 * 9 = 18.", 18.0),
    ("He made a profit of 70000.", 70000.0),
    ("He paid $80,000 for the house.", 80000.0),
    ("Each costs 2.5 dollars", 2.5),
    ("1,234,567.89", 1234567.89),
    ("0.125 of the cake", 0.125),
    # de: dot thousands, comma decimals; both present -> the last is decimal.
    ("Er kauft ein Haus für 80.000 US-Dollar.", 80000.0),
    ("Er zahlt 1.234,5 Euro.", 1234.5),
    ("Es sind 1,5 Liter.", 1.5),
    # fr: spaces as thousands separators (ASCII, no-break, narrow no-break, thin).
    ("Il gagne 80 000 €.", 80000.0),
    ("Il gagne 80\u00a0000 €.", 80000.0),
    ("Total : 1\u202f234,5 €", 1234.5),
    ("Total : 12\u2009345", 12345.0),
    ("Il a 3 pommes.", 3.0),
    # Native digits.
    ("তিনি প্রতিদিন ১৮ ডলার পান।", 18.0),  # bn
    ("उत्तर १,००,००० है", 100000.0),  # hi, Indian grouping
    ("คำตอบคือ ๑๘ บาท", 18.0),  # th
    ("الجواب هو ٨٠٬٠٠٠ دولار", 80000.0),  # ar, Arabic thousands separator
    ("المسافة ٣٫٥ كم", 3.5),  # ar, Arabic decimal separator
    ("پاسخ ۱۲۳ است", 123.0),  # fa, extended Arabic-Indic digits
    ("答案是１８。", 18.0),  # zh, full-width digits
    ("సమాధానం ౧౮", 18.0),  # te
    ("விடை ௪௨", 42.0),  # ta
    ("ఆమె $18 సంపాదిస్తుంది", 18.0),  # te with ASCII digits
    # Signs.
    ("The temperature is -6 degrees.", -6.0),
    ("x = \u22123.5", -3.5),
    ("+7 points", 7.0),
    ("5-3 gives 2, not 5-3", 3.0),  # a hyphen after a digit is no sign
    ("COVID-19", 19.0),
    # Marker precedence: first number after the last marker.
    ("The answer is 5. Check: 5 + 1 = 6.", 5.0),
    ("The answer is 5. Wait, THE ANSWER IS 7 apples, not 9.", 7.0),
    ("So the answer is: $1,000. She had 3 bags.", 1000.0),
    ("The answer is -12.", -12.0),
    ("The answer is unclear, but maybe 4.", 4.0),  # no number after the marker: last number
])
def test_extract_number(text, expected):
  assert extract_number(text) == expected


@pytest.mark.parametrize("text", ["", "no number here", "The answer is", "答案是十八"])
def test_extract_number_none(text):
  assert extract_number(text) is None


def test_parse_number_needs_exactly_one_number():
  assert parse_number(" 1,000 ") == 1000.0
  assert parse_number("-6") == -6.0
  assert parse_number("১৮") == 18.0
  assert parse_number("18 dollars") is None
  assert parse_number("abc") is None


# ---------------------------------------------------------------------------
# Readers on the fixtures.
# ---------------------------------------------------------------------------


def test_xcopa_contexts_connectives_and_labels():
  items = formats.read_xcopa(FIXTURES / "xcopa")
  by = {(i.lang, i.id): i for i in items}
  assert sorted({i.lang for i in items}) == ["it", "th", "tr", "zh"]
  assert by["it", "0"] == formats.Choice(
      id="0", lang="it", context="La bambina lasciò cadere il bicchiere quindi",
      choices=("il bicchiere si ruppe.", "il bicchiere si riempì."), label=0,
      source=f"{FIXTURES / 'xcopa' / 'val.it.jsonl'}:1")
  assert by["it", "1"].context == "Il prato era bagnato perché"
  assert by["it", "2"].label == 1
  # Thai premises carry no final period: nothing is cut.
  assert by["th", "0"].context == "เด็กหญิงทำแก้วตก ดังนั้น"
  assert by["th", "1"].context == "สนามหญ้าเปียก เพราะ"
  assert by["zh", "0"].context == "女孩把杯子掉在地上 所以"
  assert by["zh", "0"].choices == ("杯子碎了。", "杯子满了。")
  # Turkish dotless and dotted capital I lowercase to ı and i.
  assert by["tr", "2"].choices == ("ışıklar zaten açıktı.", "içerisi karanlıktı.")
  assert by["tr", "2"].context == "Adam ışığı yaktı çünkü"
  # Parallel: the same ids in every language.
  ids = {lang: [i.id for i in items if i.lang == lang] for lang in ("it", "th", "tr", "zh")}
  assert all(v == ["0", "1", "2"] for v in ids.values())


def test_xcopa_lang_override_and_english_fallback(tmp_path):
  source = (FIXTURES / "xcopa" / "val.it.jsonl").read_bytes()
  other = tmp_path / "my_copa.jsonl"
  other.write_bytes(source)
  items = formats.read_xcopa(other, lang="xx")
  assert [i.lang for i in items] == ["xx"] * 3
  assert items[0].context.endswith(" therefore") and items[1].context.endswith(" because")
  assert formats.xcopa_connective("zh_Hans", "cause") == "因为"
  _raises(lambda: formats.read_xcopa(other), str(other), "lang=")


def test_xstorycloze():
  items = formats.read_xstorycloze(FIXTURES / "xstorycloze")
  assert [i.lang for i in items] == ["en", "en", "es", "es", "hi", "hi"]
  en = items[0]
  assert en.context == ("Maya planted tomato seeds in spring. She watered them every morning. "
                        "By July the plants were taller than her. The first tomatoes turned red in August.")
  assert en.choices == ("Maya made a salad with her own tomatoes.", "Maya had never grown anything.")
  assert (en.label, items[1].label) == (0, 1)
  assert en.source.endswith("spring2016.val.en.tsv.split_20_80_eval.tsv:2")
  assert items[4].choices[1] == "माया ने कभी कुछ नहीं उगाया था।"
  assert [i.id for i in items[0:2]] == [i.id for i in items[2:4]] == [i.id for i in items[4:6]]
  assert items[0].id == "5f0c7a2e-1b3d-4c8e-9a6f-2d4b8e1c0a01"


def test_xnli_original_layout_with_language_column():
  items = formats.read_xnli(FIXTURES / "xnli")
  assert [(i.lang, i.id, i.label) for i in items] == [
      ("de", "1", 0), ("de", "2", 1), ("de", "3", 2), ("fr", "1", 0), ("fr", "2", 1), ("fr", "3", 2)]
  assert items[0].context == ("Der Hund schläft im Garten. Question: Ein Tier ruht sich aus. "
                              "True, False or Neither? Answer:")
  assert items[0].choices == ("True", "Neither", "False")
  # One lang= for a file of two languages would mislabel half of it.
  _raises(lambda: formats.read_xnli(FIXTURES / "xnli" / "xnli.test.tsv", lang="de"), "xnli.test.tsv:5",
          "mixes languages")


def test_xnli_mt_layout_and_jsonl(tmp_path):
  items = formats.read_xnli(FIXTURES / "xnli_mt")
  assert [(i.lang, i.id, i.label) for i in items] == [("sw", "0", 0), ("sw", "1", 1), ("sw", "2", 2)]
  assert items[2].context.startswith("Mbwa analala bustanini. Question: Mbwa anakimbia ndani ya nyumba.")
  path = _jsonl(tmp_path / "xnli.test.hi.jsonl", [
      {"premise": "बारिश हो रही है।", "hypothesis": "मौसम सूखा है।", "label": 2},
      {"premise": "बारिश हो रही है।", "hypothesis": "बाहर पानी गिर रहा है।", "label": "entailment"}])
  assert [(i.lang, i.label) for i in formats.read_xnli(path)] == [("hi", 2), ("hi", 0)]
  assert [i.lang for i in formats.read_xnli(path, lang="hin_Deva")] == ["hin_Deva"] * 2


def test_belebele():
  items = formats.read_belebele(FIXTURES / "belebele")
  assert [(i.lang, i.label) for i in items] == [("deu_Latn", 1), ("deu_Latn", 2), ("eng_Latn", 1), ("eng_Latn", 2)]
  eng = items[2]
  assert eng.context == ("Passage: The town market opens every Saturday at seven. Farmers bring vegetables, "
                         "cheese and bread from nearby villages, and most stalls are sold out before noon.\n"
                         "Question: When do most stalls sell out?\nAnswer:")
  assert eng.choices == ("At seven", "Before noon", "In the evening", "On Sunday")
  assert [i.id for i in items[:2]] == [i.id for i in items[2:]] == [
      "https://example.org/wiki/Town_market#1", "https://example.org/wiki/Town_market#2"]


def test_mgsm():
  items = formats.read_mgsm(FIXTURES / "mgsm")
  assert [(i.lang, i.id, i.answer) for i in items] == [
      (lang, str(k), answer) for lang in ("bn", "de", "en") for k, answer in enumerate((30.0, 2000.0, -6.0))]
  en = [i for i in items if i.lang == "en"]
  assert en[1].answer_text == "2,000"
  assert en[0].question.startswith("Lena buys 3 boxes") and en[0].question.endswith("does she have left?")
  assert en[2].source.endswith("mgsm_en.tsv:3")


def test_mgsm_skips_a_header_row(tmp_path):
  path = _write(tmp_path / "mgsm_sw.tsv", "question\tanswer\nSwali moja?\t4\n")
  items = formats.read_mgsm(path)
  assert [(i.id, i.answer, i.source) for i in items] == [("0", 4.0, f"{path}:2")]


def test_exemplars(tmp_path):
  pairs = formats.read_exemplars(FIXTURES / "mgsm_exemplars" / "exemplars_en.jsonl")
  assert len(pairs) == 2
  assert pairs[0][0] == "Sam has 5 apples and buys 7 more. How many apples does he have?"
  assert pairs[0][1].endswith("The answer is 12.")
  assert [extract_number(a) for _, a in pairs] == [12.0, 24.0]
  tsv = _write(tmp_path / "shots.tsv", "Q1?\tSo 1 + 1 = 2. The answer is 2.\n")
  assert formats.read_exemplars(tsv) == [("Q1?", "So 1 + 1 = 2. The answer is 2.")]


def test_parallel():
  lines = formats.read_parallel(FIXTURES / "flores")
  assert list(lines) == ["ben_Beng", "deu_Latn", "eng_Latn"]
  assert {len(v) for v in lines.values()} == {3}
  assert lines["eng_Latn"][1] == '"We will finish the bridge next year," the mayor said.'
  assert lines["deu_Latn"][0] == "Die Bibliothek öffnet um neun Uhr morgens."
  assert list(formats.read_parallel(FIXTURES / "flores", langs=["eng_Latn", "deu_Latn"])) == ["deu_Latn", "eng_Latn"]
  single = formats.read_parallel(FIXTURES / "flores" / "ben_Beng.devtest")
  assert list(single) == ["ben_Beng"] and len(single["ben_Beng"]) == 3
  _raises(lambda: formats.read_parallel(FIXTURES / "flores", langs=["fra_Latn"]), "fra_Latn", "found")


def test_text():
  docs = formats.read_text(FIXTURES / "perplexity")
  assert docs == {
      "de": ["Der Zug nach Hamburg hat heute zehn Minuten Verspätung.", "Im Herbst fallen die Blätter von den Bäumen.",
             "Die Post ist am Sonntag geschlossen."],
      "fr": ["Le marché ouvre tôt le samedi."],
      "sw": ["Watoto wanacheza mpira uwanjani.", "Soko linafunguliwa kila asubuhi."],
  }
  assert list(formats.read_text(FIXTURES / "perplexity" / "sw.txt", lang="swh_Latn")) == ["swh_Latn"]


def test_registry():
  assert formats.TASK_FORMATS["flores"] is formats.read_parallel
  assert formats.TASK_FORMATS["perplexity"] is formats.read_text
  assert set(formats.MULTIPLE_CHOICE) <= set(formats.TASK_FORMATS)
  for name in formats.MULTIPLE_CHOICE:
    assert all(isinstance(i, formats.Choice) for i in formats.TASK_FORMATS[name](FIXTURES / name))


def test_crlf_and_bom_are_tolerated(tmp_path):
  path = tmp_path / "val.et.jsonl"
  record = {"premise": "Mees avas kraani.", "choice1": "Vesi voolas.", "choice2": "Tuli kustus.",
            "question": "effect", "label": 0, "idx": 7}
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\r\n\r\n")
  [item] = formats.read_xcopa(path)
  assert (item.id, item.lang, item.context, item.choices) == ("7", "et", "Mees avas kraani seetõttu",
                                                             ("vesi voolas.", "tuli kustus."))


# ---------------------------------------------------------------------------
# Bad input: one DataError line naming file:line and the field.
# ---------------------------------------------------------------------------

_XCOPA_OK = {"premise": "Il cane abbaiò.", "choice1": "Arrivò il postino.", "choice2": "Il gatto dormiva.",
             "question": "cause", "label": 0, "idx": 0}


@pytest.mark.parametrize("change, fragments", [
    ({"choice2": None}, ("XCOPA record lacks 'choice2'", "expected premise, choice1, choice2, question, label")),
    ({"label": 2}, ("'label' is 2",)),
    ({"label": "x"}, ("'label'",)),
    ({"question": "reason"}, ("'question' is 'reason'",)),
    ({"premise": ""}, ("'premise'",)),
])
def test_xcopa_bad_records(tmp_path, change, fragments):
  bad = {k: v for k, v in {**_XCOPA_OK, **change}.items() if v is not None}
  path = _jsonl(tmp_path / "val.it.jsonl", [_XCOPA_OK, {**_XCOPA_OK, "idx": 1}, {**bad, "idx": 2}])
  _raises(lambda: formats.read_xcopa(path), f"{path}:3", *fragments)


def test_bad_json_line(tmp_path):
  path = _write(tmp_path / "val.it.jsonl", json.dumps(_XCOPA_OK) + "\n{not json\n")
  _raises(lambda: formats.read_xcopa(path), f"{path}:2", "not valid JSON")


def test_xstorycloze_bad_rows(tmp_path):
  good = (FIXTURES / "xstorycloze" / "spring2016.val.en.tsv.split_20_80_eval.tsv").read_text(encoding="utf-8")
  lines = good.splitlines()
  name = "spring2016.val.en.tsv.split_20_80_eval.tsv"
  wrong_label = _write(tmp_path / "a" / name, "\n".join([*lines[:2], lines[2].rsplit("\t", 1)[0] + "\t3"]) + "\n")
  _raises(lambda: formats.read_xstorycloze(wrong_label), f"{wrong_label}:3", "'AnswerRightEnding' is '3'")
  short_row = _write(tmp_path / "b" / name, "\n".join([lines[0], lines[1].rsplit("\t", 1)[0]]) + "\n")
  _raises(lambda: formats.read_xstorycloze(short_row), f"{short_row}:2", "7 tab-separated columns", "header's 8")
  no_column = _write(tmp_path / "c" / name, lines[0].replace("AnswerRightEnding", "Answer") + "\n" + lines[1] + "\n")
  _raises(lambda: formats.read_xstorycloze(no_column), f"{no_column}:1", "lacks column 'AnswerRightEnding'")


def test_xnli_bad_label_and_missing_column(tmp_path):
  path = _write(tmp_path / "xnli.test.de.tsv", "premise\thypothesis\tlabel\nA.\tB.\t1\nA.\tB.\tmaybe\n")
  _raises(lambda: formats.read_xnli(path), f"{path}:3", "'label' is 'maybe'", "entailment")
  path = _write(tmp_path / "xnli.test.fr.tsv", "premise\tlabel\nA.\t1\n")
  _raises(lambda: formats.read_xnli(path), f"{path}:2", "lacks 'hypothesis'")


def test_belebele_bad_answer_number(tmp_path):
  record = json.loads((FIXTURES / "belebele" / "eng_Latn.jsonl").read_text(encoding="utf-8").splitlines()[0])
  path = _jsonl(tmp_path / "eng_Latn.jsonl", [{**record, "correct_answer_num": "5"}])
  _raises(lambda: formats.read_belebele(path), f"{path}:1", "'correct_answer_num' is '5'")
  del record["mc_answer3"]
  path = _jsonl(tmp_path / "deu_Latn.jsonl", [record])
  _raises(lambda: formats.read_belebele(path), f"{path}:1", "lacks 'mc_answer3'")


def test_mgsm_bad_rows(tmp_path):
  path = _write(tmp_path / "mgsm_en.tsv", "Q one?\t3\nQ two without answer\n")
  _raises(lambda: formats.read_mgsm(path), f"{path}:2", "1 tab-separated columns, not 2", "question<TAB>answer")
  path = _write(tmp_path / "mgsm_de.tsv", "Q one?\t3\nQ two?\tdrei\n")
  _raises(lambda: formats.read_mgsm(path), f"{path}:2", "column 2 'answer' is 'drei'")


def test_exemplar_without_number(tmp_path):
  path = _jsonl(tmp_path / "shots.jsonl", [{"question": "Q?", "answer": "It is obvious."}])
  _raises(lambda: formats.read_exemplars(path), f"{path}:1", "'answer'")
  path = _jsonl(tmp_path / "shots2.jsonl", [{"question": "Q?"}])
  _raises(lambda: formats.read_exemplars(path), f"{path}:1", "lacks 'answer'")


def test_parallel_unequal_line_counts(tmp_path):
  _write(tmp_path / "eng_Latn.devtest", "One.\nTwo.\nThree.\n")
  _write(tmp_path / "fra_Latn.devtest", "Un.\nDeux.\nTrois.\n")
  short = _write(tmp_path / "deu_Latn.devtest", "Eins.\nZwei.\n")
  _raises(lambda: formats.read_parallel(tmp_path), f"{short} has 2", "has 3 lines")


def test_missing_paths_and_empty_folders(tmp_path):
  missing = tmp_path / "nowhere"
  _raises(lambda: formats.read_xcopa(missing), str(missing), "no such file")
  _raises(lambda: formats.read_parallel(missing), str(missing), "no such file")
  _write(tmp_path / "notes.md", "nothing here\n")
  _raises(lambda: formats.read_mgsm(tmp_path), str(tmp_path), "mgsm_<lang>.tsv")
  _raises(lambda: formats.read_xstorycloze(tmp_path), "spring2016.val.<lang>.tsv.split_20_80_{train,eval}.tsv")
  _raises(lambda: formats.read_belebele(tmp_path), "<lang>_<Script>.jsonl")


def test_two_splits_in_one_folder_are_refused(tmp_path):
  _jsonl(tmp_path / "it" / "val.it.jsonl", [_XCOPA_OK])
  _jsonl(tmp_path / "it" / "test.it.jsonl", [_XCOPA_OK])
  _raises(lambda: formats.read_xcopa(tmp_path), "two XCOPA files for language 'it'", "test.it.jsonl",
          "val.it.jsonl")
  _write(tmp_path / "f" / "eng_Latn.dev", "One.\n")
  _write(tmp_path / "f" / "eng_Latn.devtest", "One.\n")
  _raises(lambda: formats.read_parallel(tmp_path / "f"), "language 'eng_Latn'")


def test_repeated_ids_are_refused(tmp_path):
  path = _jsonl(tmp_path / "val.it.jsonl", [_XCOPA_OK, _XCOPA_OK])
  _raises(lambda: formats.read_xcopa(path), f"{path}:2", "id '0'", f"{path}:1")


def test_text_bad_records(tmp_path):
  path = _jsonl(tmp_path / "heldout.jsonl", [{"text": "Hallo."}])
  _raises(lambda: formats.read_text(path), f"{path}:1", "'lang'", "lang=")
  assert formats.read_text(path, lang="de") == {"de": ["Hallo."]}
  path = _jsonl(tmp_path / "other.jsonl", [{"text": "", "lang": "de"}])
  _raises(lambda: formats.read_text(path), f"{path}:1", "'text'")


def test_empty_files_are_refused(tmp_path):
  path = _write(tmp_path / "val.it.jsonl", "\n")
  _raises(lambda: formats.read_xcopa(path), str(path), "no XCOPA records")
  path = _write(tmp_path / "mgsm_en.tsv", "")
  _raises(lambda: formats.read_mgsm(path), str(path), "no MGSM records")
