"""Dictionaries for PreAlign: CLDR groups against babel, MUSE/TSV readers and their rejects, round trips, CLI."""

import json

import pytest
from babel import Locale

from polyglot_jax.data import dictionaries as dicts
from polyglot_jax.data import records
from polyglot_jax.errors import ConfigError, DataError


def _by_key(groups, category, key):
  return {w.lang: w.text for g in groups if g.extra == {"category": category, "key": key} for w in g.words}


def test_cldr_groups_are_babel_names_aligned_by_key():
  groups, report = dicts.from_cldr(["fr", "de", "en"], categories=("territory", "month", "weekday"))
  assert _by_key(groups, "territory", "FR") == {"fra": "France", "deu": "Frankreich", "eng": "France"}
  assert _by_key(groups, "month", "1")["fra"] == "janvier"  # CLDR's text as-is: French months are lowercase.
  fr, de = Locale("fr"), Locale("de")
  for key in ("JP", "BR", "ZA"):
    assert _by_key(groups, "territory", key) == {"fra": fr.territories[key], "deu": de.territories[key],
                                                 "eng": Locale("en").territories[key]}
  for month in range(1, 13):
    assert _by_key(groups, "month", str(month))["deu"] == de.months["format"]["wide"][month]
  weekdays = [g for g in groups if g.extra["category"] == "weekday"]
  assert [g.extra["key"] for g in weekdays] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
  assert weekdays[0].words[0].text == fr.days["format"]["wide"][0]
  assert report.kept == len(groups) and not report.rejected


def test_cldr_skips_root_placeholders_and_counts_them():
  # Haitian Creole's locale has no month names; babel falls back to root's 'M01', which is not a name.
  groups, report = dicts.from_cldr(["en", "ht"], categories=("month", "language"))
  assert not [g for g in groups if g.extra["category"] == "month"]
  assert report.skipped["hat: no CLDR month name for the key"] == 12
  assert report.skip_examples["hat: no CLDR month name for the key"] == "cldr month 1"


def test_cldr_errors_name_the_language_or_category():
  with pytest.raises(ConfigError, match=r"language 'hmn' \(Hmong\) has no CLDR locale in babel"):
    dicts.from_cldr(["en", "hmn"])
  with pytest.raises(ConfigError, match=r"unknown CLDR categories \['planets'\]"):
    dicts.from_cldr(["en", "fr"], categories=("planets",))
  with pytest.raises(dicts.langs.UnknownLanguageError, match="'xx'"):
    dicts.from_cldr(["en", "xx"])
  with pytest.raises(DataError, match="no usable word pair for language 'eng', 'hat' of the languages asked for "
                                     "eng,hat; add eng, hat words"):
    dicts.from_cldr(["en", "ht"], categories=("month",))


def test_muse_reader_counts_bad_lines(tmp_path):
  path = tmp_path / "en-fr.txt"
  path.write_text("cat chat\ncat\tmatou\nthe cat chat\n\nbank\t\nbank banque\nrive\n", encoding="utf-8")
  assert dicts.muse_languages(str(path)) == ("eng", "fra")
  pairs, report = dicts.read_muse(str(path), "en", "fr")
  assert [(p.src.text, p.tgt.text) for p in pairs] == [("cat", "chat"), ("cat", "matou"), ("bank", "banque")]
  assert {p.src.lang for p in pairs} == {"eng"} and {p.tgt.lang for p in pairs} == {"fra"}
  assert report.rejected == {dicts.WRONG_COLUMNS: 2, dicts.EMPTY_WORD: 1}
  assert report.examples[dicts.WRONG_COLUMNS].startswith(f"{path}:3 ")
  assert report.examples[dicts.EMPTY_WORD] == f"{path}:5"
  # One-to-many pairs merge into connected groups.
  groups = dicts.pairs_to_groups(pairs)
  assert [[w.text for w in g.words] for g in groups] == [["cat", "chat", "matou"], ["bank", "banque"]]


def test_muse_languages_from_flags_or_error(tmp_path):
  assert dicts.muse_languages(str(tmp_path / "dict.txt"), ["de", "en"]) == ("deu", "eng")
  with pytest.raises(ConfigError, match="cannot tell the languages of MUSE file"):
    dicts.muse_languages(str(tmp_path / "dict.txt"), ["de", "en", "fr"])
  with pytest.raises(ConfigError, match="is eng-spa by its name, not within --languages eng,fra"):
    dicts.muse_languages(str(tmp_path / "en-es.txt"), ["en", "fr"])
  empty = tmp_path / "en-de.txt"
  empty.write_text("only-one-column\n")
  with pytest.raises(DataError, match="gives no usable eng-deu pair"):
    dicts.read_muse(str(empty), "en", "de")


def test_tsv_reader_counts_bad_lines(tmp_path):
  path = tmp_path / "words.tsv"
  path.write_text("en\tfr\txx\tde\n"
                  "water\teau\t\tWasser\n"
                  "fire\tfeu\tzz\t\n"  # A cell under the unknown language: rejected; the rest is a group.
                  "\tterre\t\t\n"  # One word left: rejected.
                  "air\tair\n"  # Wrong column count.
                  "sky\t \t\t\n", encoding="utf-8")  # A blank cell is no word: fewer than 2 words.
  groups, report = dicts.read_tsv(str(path))
  assert [[(w.text, w.lang) for w in g.words] for g in groups] == [
      [("water", "eng"), ("eau", "fra"), ("Wasser", "deu")], [("fire", "eng"), ("feu", "fra")]]
  assert report.rejected == {dicts.UNKNOWN_LANGUAGE: 2, dicts.TOO_FEW_WORDS: 2, dicts.WRONG_COLUMNS: 1}
  assert report.examples[dicts.UNKNOWN_LANGUAGE] == f"{path}:1 (column 3: 'xx')"
  assert report.examples[dicts.TOO_FEW_WORDS].startswith(f"{path}:4 ")
  assert report.examples[dicts.WRONG_COLUMNS].startswith(f"{path}:5 ")
  # Asking for languages keeps their columns; a language without a column is an error naming it.
  kept, report = dicts.read_tsv(str(path), ["en", "de"])
  assert [[w.lang for w in g.words] for g in kept] == [["eng", "deu"]]
  assert report.skipped["column of fra, not in the languages asked for"] == 1
  assert report.skipped["row with fewer than 2 words of the languages asked for"] == 1  # fire / feu.
  with pytest.raises(DataError, match=r"words.tsv' has no column for rus \(its header: 'en\\tfr"):
    dicts.read_tsv(str(path), ["en", "ru"])


@pytest.mark.parametrize("kind", ["word_pairs", "word_groups"])
def test_jsonl_round_trip_parses_as_record_kind(tmp_path, kind):
  groups, _ = dicts.from_cldr(["en", "fr", "ja"], categories=("month", "currency"))
  entries = dicts.groups_to_pairs(groups) if kind == "word_pairs" else groups
  path = str(tmp_path / "dict.jsonl")
  assert dicts.write_jsonl(entries, path) == len(entries)
  back, report = dicts.read_jsonl(path)
  assert back == entries and report.kept == len(entries) and not report.rejected
  parser = records.get_kind(kind)
  with open(path, encoding="utf-8") as f:
    for line in f:
      assert not isinstance(parser.parse(json.loads(line)), records.Rejected), line
  with pytest.raises(ConfigError, match="mix pairs and groups"):
    dicts.write_jsonl(groups[:1] + dicts.groups_to_pairs(groups[:1]), path)


def test_groups_to_pairs_expands_every_two_languages():
  group = dicts.Group((dicts.Word("one", "eng"), dicts.Word("un", "fra"), dicts.Word("eins", "deu")), {"key": "1"})
  pairs = dicts.groups_to_pairs([group])
  assert [(p.src.text, p.tgt.text) for p in pairs] == [("one", "un"), ("one", "eins"), ("un", "eins")]
  assert all(p.extra == {"key": "1"} for p in pairs)
  assert dicts.language_pairs([group]) == {"eng-fra": 1, "eng-deu": 1, "fra-deu": 1}


def test_read_jsonl_rejects_with_reasons(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"src_text": "a", "tgt_text": "b", "src_lang": "en", "tgt_lang": "fr"}\n'
                  '{"src_text": "a", "tgt_text": "", "src_lang": "en", "tgt_lang": "fr"}\n'
                  '{"words": [{"text": "a", "lang": "en"}, {"text": "b", "lang": "qq"}]}\n'
                  'not json\n[1]\n')
  entries, report = dicts.read_jsonl(str(path))
  assert len(entries) == 1 and entries[0].src == dicts.Word("a", "eng")
  assert report.examples["missing, empty or non-string 'src_text' / 'tgt_text'"] == f"{path}:2"
  assert report.examples["unknown language 'qq'"] == f"{path}:3"
  assert report.rejected["malformed JSON"] == 1 and report.rejected["not a pair or group object"] == 1


def test_tokenize_words_spans_and_words_mapped_to_nothing(demo_data):
  processor = dicts.load_processor(demo_data["tokenizer"])
  groups = [dicts.Group((dicts.Word("France", "eng"), dicts.Word("Frankreich", "deu"), dicts.Word("\u200b", "fra")),
                        where="g:1"),
            dicts.Group((dicts.Word("cat", "eng"), dicts.Word("\u200b", "fra")), where="g:2")]
  pairs = [dicts.Pair(dicts.Word("cat", "eng"), dicts.Word("\u200b", "fra"), where="p:1")]
  out, report = dicts.tokenize_words(groups + pairs, processor)
  assert len(out) == 1 and [w.text for w in out[0].words] == ["France", "Frankreich"]
  assert out[0].words[1].ids == tuple(processor.encode("Frankreich"))
  assert report.rejected == {dicts.TOKENIZER_EMPTY: 3, dicts.TOO_FEW_WORDS: 2}
  assert report.examples[dicts.TOKENIZER_EMPTY] == "g:1 (fra '\\u200b')"
  with pytest.raises(DataError, match="no usable word pair for language 'fra'"):
    dicts.require_languages(out, ["en", "fr"], "test", report)
  # Coverage over unique words; the zero-width space is the one empty word.
  table = dicts.stats(groups + pairs, processor)
  assert table["languages"]["fra"]["empty"] == 1.0 and table["languages"]["eng"]["unique"] == 2
  assert table["languages"]["deu"]["tokens_per_word"] == len(processor.encode("Frankreich"))


def test_cli_build_and_stats(tmp_path, capsys, demo_data):
  from polyglot_jax.cli import main
  out = tmp_path / "cldr.jsonl"
  assert main(["data", "dictionary", "build", "--source", "cldr", "--languages", "en,fr,de", "--out", str(out),
               "--categories", "territory,month", "--tokenizer", demo_data["tokenizer"]]) == 0
  printed = capsys.readouterr().out
  lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
  assert len(lines) == len(Locale("en").territories) + 12
  assert f"wrote {len(lines)} entries to {out}" in printed
  assert "rejected (bad input): none" in printed
  deu_words = sum(w["lang"] == "deu" for line in lines for w in line["words"])
  assert any(row.split()[:2] == ["deu", f"{deu_words:,}"] for row in printed.splitlines())
  assert main(["data", "dictionary", "stats", "--input", str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"kept {len(lines)} entries" in printed and f"dictionary: {len(lines)} groups, 0 pairs" in printed
  pairs = tmp_path / "pairs.jsonl"
  assert main(["data", "dictionary", "build", "--source", "jsonl", "--input", str(out), "--languages", "fr,de",
               "--format", "pairs", "--out", str(pairs)]) == 0
  first = json.loads(pairs.read_text(encoding="utf-8").splitlines()[0])
  assert (first["src_lang"], first["tgt_lang"]) == ("fra", "deu") and first["category"] == "territory"
  assert main(["data", "dictionary", "build", "--source", "cldr", "--languages", "en,hmn", "--out",
               str(tmp_path / "x.jsonl")]) == 1
  assert "language 'hmn' (Hmong) has no CLDR locale" in capsys.readouterr().err
