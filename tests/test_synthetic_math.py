"""The synthetic multilingual math testbed: parallel, correct, readable by the eval readers."""

import json
import os
import unicodedata

import pytest

from polyglot_jax import cli
from polyglot_jax.data import records, synthetic_math
from polyglot_jax.errors import ConfigError
from polyglot_jax.eval import answers, formats

ALL = ("en", "fr", "de", "es", "ru", "zh", "hi")


def _by_id(items):
  out = {}
  for item in items:
    out.setdefault(item["id"], {})[item["lang"]] = item
  return out


def _script(text):
  """The Unicode script family of the first letter outside ASCII names' Latin (by character name)."""
  for ch in text:
    if ch.isalpha():
      name = unicodedata.name(ch, "")
      for script in ("CYRILLIC", "CJK", "DEVANAGARI", "LATIN"):
        if name.startswith(script):
          return script
  return None


@pytest.fixture(scope="module")
def problems():
  return synthetic_math.make_problems(60, ALL, seed=3)


def test_deterministic_and_seeded(problems):
  assert synthetic_math.make_problems(60, ALL, seed=3) == problems
  other = synthetic_math.make_problems(60, ALL, seed=4)
  assert [p["question"] for p in other] != [p["question"] for p in problems]


def test_parallel_across_languages(problems):
  groups = _by_id(problems)
  assert len(groups) == 60
  scripts = set()
  for group in groups.values():
    assert set(group) == set(ALL)
    assert len({(g["answer"], g["op"], tuple(g["operands"])) for g in group.values()}) == 1
    assert len({g["question"] for g in group.values()}) == len(ALL)
    scripts.update(_script(g["question"]) for g in group.values())
  assert scripts == {"LATIN", "CYRILLIC", "CJK", "DEVANAGARI"}


def test_answers_recompute_and_extract(problems):
  ops = set()
  for p in problems:
    a, b, *rest = p["operands"]
    expected = {"add": a + b, "sub": a - b, "mul": a * b,
                "add_sub": a + b - (rest[0] if rest else 0), "mul_add": a * b + (rest[0] if rest else 0)}[p["op"]]
    assert p["answer"] == expected and p["answer"] >= 2
    assert p["cot"].endswith(f"The answer is {p['answer']}.")
    assert answers.extract_number(p["cot"]) == p["answer"], (p["lang"], p["cot"])
    assert p["question"].isprintable() and "\t" not in p["question"]
    assert all(str(n) in p["question"] for n in p["operands"])
    ops.add(p["op"])
  assert ops == set(synthetic_math.OPS)


def test_difficulty_and_ops():
  easy = synthetic_math.make_problems(30, ["en"], ops=["mul"], difficulty=1)
  assert {p["op"] for p in easy} == {"mul"}
  assert max(p["answer"] for p in easy) <= 5 * 10
  hard = synthetic_math.make_problems(30, ["en"], ops=["add"], difficulty=3)
  assert max(p["answer"] for p in hard) > 100
  with pytest.raises(ConfigError, match="operation"):
    synthetic_math.make_problems(2, ["en"], ops=["div"])
  with pytest.raises(ConfigError, match="no templates for language 'sw'"):
    synthetic_math.make_problems(2, ["en", "sw"])
  with pytest.raises(ConfigError, match="distinct problems"):
    synthetic_math.make_problems(500, ["en"], ops=["mul"], difficulty=1)


def test_write_splits_layout(tmp_path):
  langs = ["en", "fr", "ru", "zh", "hi"]
  counts = synthetic_math.write_splits(str(tmp_path), n_train=20, n_test=7, languages=langs, seed=1)
  assert counts["qalign_stage1.jsonl"] == {lang: 20 for lang in langs if lang != "en"}
  assert counts["qalign_stage2.jsonl"] == {"en": 20}
  assert counts["sft_multilingual.jsonl"] == {lang: 20 for lang in langs}

  kind = records.get_kind("instruction")
  for name in ("qalign_stage1.jsonl", "qalign_stage2.jsonl", "sft_multilingual.jsonl"):
    lines = (tmp_path / name).read_text(encoding="utf-8").splitlines()
    for line in lines:
      record = json.loads(line)
      assert not isinstance(kind.parse(record), records.Rejected), record
  stage1 = [json.loads(x) for x in (tmp_path / "qalign_stage1.jsonl").read_text(encoding="utf-8").splitlines()]
  assert stage1[0]["instruction"] == "Translate the following sentences from French to English."
  assert {r["instruction"] for r in stage1 if r["lang"] == "zh"} == {
      "Translate the following sentences from Chinese to English."}

  # Test items: MGSM layout, row i the same item everywhere, held out from training.
  mgsm = formats.read_mgsm(tmp_path / "test")
  assert {m.lang for m in mgsm} == set(langs)
  by_lang = {lang: [m for m in mgsm if m.lang == lang] for lang in langs}
  assert all(len(items) == 7 for items in by_lang.values())
  assert [m.answer for m in by_lang["hi"]] == [m.answer for m in by_lang["en"]]
  parallel = [json.loads(x) for x in (tmp_path / "parallel_questions.jsonl").read_text(encoding="utf-8").splitlines()]
  test = [json.loads(x) for x in (tmp_path / "test" / "problems.jsonl").read_text(encoding="utf-8").splitlines()]
  train_ids, test_ids = {r["id"] for r in parallel}, {r["id"] for r in test}
  assert len(train_ids) == 20 and len(test_ids) == 7 and not train_ids & test_ids
  drawn = synthetic_math.make_problems(27, ["en"], seed=1)  # The same draw: train is the first 20.
  assert [(r["op"], r["operands"]) for r in test if r["lang"] == "en"] == [(p["op"], p["operands"]) for p in drawn[20:]]
  assert {(p["op"], tuple(p["operands"])) for p in drawn[:20]}.isdisjoint(
      (r["op"], tuple(r["operands"])) for r in test)
  assert all(set(r) >= {"id", "lang", "question", "answer", "en_question"} and r["lang"] != "en" for r in parallel)

  for lang in langs:
    shots = formats.read_exemplars(tmp_path / f"exemplars_{lang}.jsonl")
    assert len(shots) == 4
  en_shots, ru_shots = (formats.read_exemplars(tmp_path / f"exemplars_{x}.jsonl") for x in ("en", "ru"))
  assert [answers.extract_number(a) for _, a in en_shots] == [answers.extract_number(a) for _, a in ru_shots]


def test_cli_and_bad_pivot(tmp_path, capsys):
  out = tmp_path / "synth"
  rc = cli.main(["data", "synth-math", "--out", str(out), "--n_train", "6", "--n_test", "3",
                 "--languages", "en,de,ru,zh", "--seed", "2"])
  assert rc == 0
  printed = capsys.readouterr().out
  assert "qalign_stage1.jsonl" in printed and "test/mgsm_zh.tsv" in printed
  assert os.path.exists(out / "test" / "mgsm_de.tsv") and os.path.exists(out / "manifest.json")
  rc = cli.main(["data", "synth-math", "--out", str(out), "--n_train", "2", "--n_test", "1",
                 "--languages", "fr,de", "--pivot", "en"])
  assert rc == 1
  assert "pivot 'en' is not among" in capsys.readouterr().err
