"""``data instruct``: translation and multiple-choice instruction records, English or native wording."""

import collections
import json
import os

import pytest

from polyglot_jax import cli
from polyglot_jax.data import instruct, records
from polyglot_jax.errors import ConfigError
from polyglot_jax.eval import formats

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
PARALLEL = {"eng_Latn": ["The cat sleeps.", "", "It rains."],
            "fra_Latn": ["Le chat dort.", "", "Il pleut."],
            "rus_Cyrl": ["Кошка спит.", "", "Идёт дождь."]}


def test_translation_both_directions():
  out = instruct.translation_records(PARALLEL)
  directions = collections.Counter((r["src_lang"], r["tgt_lang"]) for r in out)
  assert directions == {("fra_Latn", "eng_Latn"): 2, ("eng_Latn", "fra_Latn"): 2,
                        ("rus_Cyrl", "eng_Latn"): 2, ("eng_Latn", "rus_Cyrl"): 2}  # Blank line 2 left out.
  first = out[0]
  assert first == {"instruction": "Translate the following sentences from French to English.",
                   "input": "Le chat dort.", "output": "The cat sleeps.", "lang": "fra_Latn",
                   "src_lang": "fra_Latn", "tgt_lang": "eng_Latn"}
  back = [r for r in out if r["src_lang"] == "eng_Latn" and r["lang"] == "rus_Cyrl"]
  assert back[0]["instruction"] == "Translate the following sentences from English to Russian."
  assert back[0]["output"] == "Кошка спит."
  one_way = instruct.translation_records(PARALLEL, pivot="fr", both_directions=False)
  assert {(r["src_lang"], r["tgt_lang"]) for r in one_way} == {("eng_Latn", "fra_Latn"), ("rus_Cyrl", "fra_Latn")}
  kind = records.get_kind("instruction")
  assert not any(isinstance(kind.parse(r), records.Rejected) for r in out)


def test_native_wording_per_language():
  native = instruct.translation_records(PARALLEL, wording="native")
  by = {(r["src_lang"], r["tgt_lang"]): r["instruction"] for r in native}
  assert by[("fra_Latn", "eng_Latn")] == "Traduisez les phrases suivantes du français en anglais."
  assert by[("eng_Latn", "fra_Latn")] == "Traduisez les phrases suivantes de l'anglais en français."
  assert by[("rus_Cyrl", "eng_Latn")] == "Переведите следующие предложения с русского на английский."
  w = instruct.instruction_wording
  assert w("translation", "de", "native", src="en", tgt="de") == \
      "Übersetze die folgenden Sätze aus dem Englischen ins Deutsche."
  assert w("translation", "tr", "native", src="tr", tgt="en") == "Aşağıdaki cümleleri Türkçeden İngilizceye çevirin."
  assert w("translation", "it", "native", src="es", tgt="it") == \
      "Traduci le seguenti frasi dallo spagnolo in italiano."
  assert w("translation", "zh", "native", src="en", tgt="zh") == "请将以下句子从英语翻译成中文。"
  assert w("translation", "zh", "english", src="en", tgt="zh") == \
      "Translate the following sentences from English to Chinese."
  for lang in ("en", "fr", "de", "es", "ru", "zh", "hi", "it", "th", "tr", "bn"):
    text = w("choice", lang, "native")
    assert (text == instruct.ENGLISH["choice"]) == (lang == "en")
    assert w("translation", lang, "native", src=lang, tgt="en") != w("translation", lang, "english", src=lang,
                                                                     tgt="en") or lang == "en"


def test_native_fallback_is_counted():
  fallbacks = collections.Counter()
  text = instruct.instruction_wording("choice", "sw", "native", fallbacks=fallbacks)
  assert text == instruct.ENGLISH["choice"] and fallbacks == {("choice", "sw"): 1}
  text = instruct.instruction_wording("translation", "fr", "native", src="fr", tgt="sw", fallbacks=fallbacks)
  assert text == "Translate the following sentences from French to Swahili."
  assert fallbacks[("translation", "fr")] == 1
  with pytest.raises(ConfigError, match="--wording 'xp3' is unknown"):
    instruct.instruction_wording("choice", "fr", "xp3")


def test_choice_records_from_xcopa():
  items = formats.read_xcopa(os.path.join(FIXTURES, "xcopa"))
  english = instruct.choice_records(items)
  native = instruct.choice_records(items, wording="native")
  assert len(english) == len(items) == 12
  for item, e, n in zip(items, english, native):
    assert e["output"] == item.choices[item.label] and e["lang"] == item.lang
    assert e["input"].startswith(item.context + "\n") and all(c in e["input"] for c in item.choices)
    assert e["instruction"] == instruct.ENGLISH["choice"]
    assert n["input"] == e["input"] and n["output"] == e["output"]
  it = next(n for n in native if n["lang"] == "it")
  assert it["instruction"] == "Scegli l'opzione corretta per il testo seguente."
  assert it["input"].endswith("\nA. il bicchiere si ruppe.\nB. il bicchiere si riempì.")
  assert {n["instruction"] for n in native if n["lang"] == "th"} == {"เลือกตัวเลือกที่ถูกต้องสำหรับข้อความด้านล่าง"}


def test_cli_end_to_end(tmp_path, capsys):
  out = tmp_path / "ins" / "train.jsonl"
  rc = cli.main(["data", "instruct", "--task", f"flores={FIXTURES}/flores", "--task", f"xcopa={FIXTURES}/xcopa",
                 "--task", f"xstorycloze={FIXTURES}/xstorycloze", "--out", str(out), "--wording", "native"])
  assert rc == 0
  printed = capsys.readouterr().out
  lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
  counts = collections.Counter(r["lang"] for r in lines)
  assert counts["it"] == 3 and counts["deu_Latn"] == 6 and counts["ben_Beng"] == 6
  assert "directions: ben_Beng->eng_Latn 3, deu_Latn->eng_Latn 3, eng_Latn->ben_Beng 3, eng_Latn->deu_Latn 3" \
      in printed
  assert "xcopa: it 3, th 3, tr 3, zh 3 (total 12)" in printed
  kind = records.get_kind("instruction")
  assert all(not isinstance(kind.parse(r), records.Rejected) for r in lines)
  parsed, rejected = records.read_records([str(out)], "instruction")
  assert len(parsed) == len(lines) and not rejected


def test_cli_bad_input(tmp_path, capsys):
  out = str(tmp_path / "x.jsonl")
  assert cli.main(["data", "instruct", "--task", f"xcopa={FIXTURES}/xcopa", "--out", out, "--wording", "xp3"]) == 1
  assert "--wording 'xp3' is unknown" in capsys.readouterr().err
  assert cli.main(["data", "instruct", "--task", f"mgsm={FIXTURES}/mgsm", "--out", out]) == 1
  assert "cannot become instruction records" in capsys.readouterr().err
  bad = tmp_path / "val.it.jsonl"
  bad.write_text('{"premise": "x", "choice1": "a", "choice2": "b", "question": "cause"}\n', encoding="utf-8")
  assert cli.main(["data", "instruct", "--task", f"xcopa={bad}", "--out", out]) == 1
  err = capsys.readouterr().err.strip()
  assert f"{bad}:1" in err and "'label'" in err and len(err.splitlines()) == 1
  assert cli.main(["data", "instruct", "--task", f"flores={FIXTURES}/flores", "--pivot", "fra", "--out", out]) == 1
  assert "no file for pivot 'fra'" in capsys.readouterr().err
