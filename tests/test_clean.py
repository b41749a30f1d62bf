"""Each cleaning filter on crafted documents; counts add up; PII masked."""

import json

import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax.data.clean import cleaner, dedup, filters, script

GOOD_EN = "The committee met on Tuesday to discuss the new library budget and the opening hours for the summer."
GOOD_DE = "Der Ausschuss traf sich am Dienstag, um das neue Budget der Bibliothek und die Öffnungszeiten zu besprechen."


def clean_config(**kw):
  c = config_lib.default_config()
  c.lock()
  for k, v in kw.items():
    config_lib.set_key(c, f"clean.{k}", v, from_string=False)
  return c.clean


def test_filter_measures():
  assert filters.word_count("one two three", "Latn") == 3
  assert filters.word_count("猫坐在垫子上", "Hans") == 3  # 6 letters / 2.
  assert filters.char_repetition("abcdefghijklmnopqrstuvwxyz") == 0.0
  assert filters.char_repetition("a" * 20) == pytest.approx(10 / 11)  # 11 10-grams, 10 repeats.
  assert filters.word_repetition("a b c d e a b c d e") == pytest.approx(1 / 6)  # 6 5-grams, 1 repeat.
  assert filters.special_char_ratio("ab!!") == pytest.approx(0.5)
  assert filters.special_char_ratio("ab 12") == 0.0


def test_script_detection():
  assert script.dominant_script("Привет, мир")[0] == "Cyrl"
  assert script.matches("日本語のテキストです", "Jpan")[0]
  assert script.matches("한국어 문장입니다", "Kore")[0]
  assert not script.matches("This is Latin text", "Cyrl")[0]


def test_pii_masking():
  text, counts = filters.mask_pii("Write to jane.doe@example.org or call +1 415-555-0132 from 192.168.10.4.")
  assert text == "Write to <EMAIL> or call <PHONE> from <IP>."
  assert counts == {"EMAIL": 1, "PHONE": 1, "IP": 1}
  assert filters.mask_pii("Version 3.11 was released in 2023.")[0] == "Version 3.11 was released in 2023."


def test_normalised_exact_keys_and_minhash():
  assert dedup.exact_key("Hello,   World!") == dedup.exact_key("hello world")
  index = dedup.MinHashIndex(threshold=0.8)
  assert index.add(GOOD_EN * 2) == 0.0
  assert index.add(GOOD_EN * 2 + " Thanks.") >= 0.8
  assert index.add(GOOD_DE * 2) < 0.5


def test_clean_end_to_end(tmp_path):
  docs = [
      {"text": GOOD_EN, "lang": "en"},  # kept
      {"text": GOOD_DE, "lang": "de"},  # kept
      {"text": "Too short.", "lang": "en"},  # too_few_words
      {"text": "$$$ ### @@@ %%% !!! ^^^ &&& *** +++ === ~~~ " + "x y z w", "lang": "en"},  # special_characters
      {"text": "buy now " * 30, "lang": "en"},  # char_repetition
      {"text": GOOD_EN + " Contact admin@example.com for details.", "lang": "en"},  # kept, PII masked
      {"text": GOOD_EN.upper().replace(".", "!"), "lang": "en"},  # exact_duplicate (after normalising)
      {"text": GOOD_DE + " Danke.", "lang": "de"},  # near_duplicate
      {"text": "Это предложение написано по-русски и должно быть отклонено как несоответствие.", "lang": "en"},  # script
      {"text": GOOD_DE + " Und noch ein Satz über Bücher.", "lang": "fr"},  # lid_mismatch
  ]
  path = tmp_path / "in.jsonl"
  lines = [json.dumps(d, ensure_ascii=False) for d in docs] + ["{not json", '{"text": "x", "lang": "tlh"}']
  path.write_text("\n".join(lines) + "\n")
  report = cleaner.clean([str(path)], str(tmp_path / "out"), clean_config(), progress=False)
  kept = [json.loads(l) for l in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
  rejected = [json.loads(l) for l in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
  assert len(kept) + len(rejected) == len(lines)
  reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejected}
  assert reasons["3"] == "too_few_words"
  assert reasons["4"] == "special_characters"
  assert reasons["5"] == "char_repetition"
  assert reasons["7"] == "exact_duplicate"
  assert reasons["8"].startswith("near_duplicate")
  assert reasons["9"].startswith("script_mismatch: Cyrl for eng")
  assert reasons["10"].startswith("lid_mismatch: deu")
  assert reasons["11"] == "malformed_json" and reasons["12"] == "unknown_language"
  assert [k["text"] for k in kept] == [GOOD_EN, GOOD_DE, GOOD_EN + " Contact <EMAIL> for details."]
  assert report["eng"]["input"] == 7 and report["eng"]["kept"] == 2 and report["eng"]["pii_masked"] == {"EMAIL": 1}
  assert report["?"]["rejected"] == 2
  for c in report.values():
    assert c["input"] == c.get("kept", 0) + c.get("rejected", 0)


def test_per_language_thresholds(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_text(json.dumps({"text": "Kurz und gut, danke.", "lang": "deu"}) + "\n")
  strict = cleaner.clean([str(path)], str(tmp_path / "a"), clean_config(), use_lid=False, progress=False)
  assert strict["deu"].get("too_few_words") == 1
  loose = cleaner.clean([str(path)], str(tmp_path / "b"), clean_config(per_language=(("de", "min_words", 3),)),
                        use_lid=False, progress=False)
  assert loose["deu"]["kept"] == 1
  with pytest.raises(cleaner.DataError, match="unknown threshold 'min_word'"):
    cleaner.thresholds(clean_config(per_language=(("de", "min_word", 3),)))
