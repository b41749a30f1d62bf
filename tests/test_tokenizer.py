"""Tokenizer report numbers on a parallel fixture computed by hand; the train/report commands."""

import json
import os

import pytest

from polyglot_jax.tokenizer import report as report_lib

FIXTURE = [
    {"id": "1", "lang": "eng", "text": "the cat sat"},
    {"id": "1", "lang": "deu", "text": "die Katze saß"},
    {"id": "1", "lang": "zho", "text": "猫坐着"},
    {"id": "2", "lang": "eng", "text": "hello"},
    {"id": "2", "lang": "deu", "text": "hallo"},
    {"id": "2", "lang": "zho", "text": "你好"},
    {"id": "3", "lang": "eng", "text": "only english"},  # Not parallel: left out.
]


def test_report_numbers_by_hand():
  parallel = report_lib.parallel_sentences(FIXTURE)
  assert sorted(parallel) == ["1", "2"]
  # A character tokenizer that skips spaces: tokens = non-space characters.
  report = report_lib.tokenizer_report(lambda s: [c for c in s if c != " "], parallel, reference="eng")
  # eng: "thecatsat" 9 + "hello" 5 = 14 tokens, 3 + 1 = 4 words, 11 + 5 = 16 bytes.
  assert report["eng"]["tokens"] == 14 and report["eng"]["words"] == 4 and report["eng"]["bytes"] == 16
  assert report["eng"]["fertility"] == pytest.approx(14 / 4)
  assert report["eng"]["parity"] == pytest.approx(1.0)
  assert report["eng"]["bytes_per_token"] == pytest.approx(16 / 14)
  # deu: "dieKatzesaß" 11 + "hallo" 5 = 16 tokens; bytes 14 (ß is 2 bytes) + 5 = 19.
  assert report["deu"]["tokens"] == 16 and report["deu"]["bytes"] == 19
  assert report["deu"]["parity"] == pytest.approx(16 / 14)
  # zho: 3 + 2 = 5 tokens, 2 "words", 3 bytes per character.
  assert report["zho"]["tokens"] == 5 and report["zho"]["words"] == 2 and report["zho"]["bytes"] == 15
  assert report["zho"]["fertility"] == pytest.approx(2.5)
  assert report["zho"]["parity"] == pytest.approx(5 / 14)
  assert report["zho"]["bytes_per_token"] == pytest.approx(3.0)


def test_report_errors():
  with pytest.raises(report_lib.ReportError, match="reference language 'fra' is not in the parallel text"):
    report_lib.tokenizer_report(str.split, report_lib.parallel_sentences(FIXTURE), reference="fra")
  with pytest.raises(report_lib.ReportError, match="no sentence is present in every language"):
    report_lib.tokenizer_report(str.split, {}, reference="eng")


def test_train_and_report_commands(tmp_path, demo_data):
  from polyglot_jax.cli import main
  prefix = str(tmp_path / "tok")
  assert main(["tokenizer", "train", "--input", demo_data["train"], "--output", prefix, "--vocab_size", "2000",
               "--character_coverage", "0.98", "--alpha", "0.0"]) == 0
  assert os.path.isfile(prefix + ".model")
  parallel = tmp_path / "parallel.jsonl"
  parallel.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in FIXTURE))
  out = tmp_path / "report"
  assert main(["tokenizer", "report", "--tokenizer", prefix + ".model", "--input", str(parallel),
               "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert set(report) == {"eng", "deu", "zho"} and report["eng"]["parity"] == 1.0
  png = (out / "parity.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_too_small_vocabulary_is_explained(tmp_path, demo_data):
  from polyglot_jax.data.jsonl import DataError, read_jsonl
  from polyglot_jax.tokenizer.train import train_sentencepiece
  records, _ = read_jsonl([demo_data["train"]])
  with pytest.raises(DataError, match=r"vocab_size=300 is smaller than the \d+ characters the text needs"):
    train_sentencepiece(records, str(tmp_path / "tok"), 300)


def test_balanced_sampling_follows_alpha():
  from polyglot_jax.tokenizer.train import balanced_lines
  records = [("a" * 10 + "\n" + "b" * 10, "eng")] * 90 + [("c" * 10, "swa")] * 10
  _, taken = balanced_lines(records, alpha=0.0)
  # Equal shares: each language gets about half of the 1900 characters.
  assert abs(taken["eng"] - taken["swa"]) <= 10
  _, taken = balanced_lines(records, alpha=1.0)
  assert taken["eng"] == pytest.approx(1800, abs=10) and taken["swa"] == pytest.approx(100, abs=10)
