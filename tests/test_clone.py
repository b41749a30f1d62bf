"""English-Clone: the clone tokenizer splits cloned text exactly like the source, and the map inverts."""

import json

import numpy as np
import pytest
import sentencepiece as spm

from polyglot_jax.data import clone


@pytest.fixture(scope="module")
def cloned(demo_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("clone")
  path, ids, clone_map = clone.make_clone_tokenizer(demo_data["tokenizer"], str(root / "clone.model"))
  return {"root": root, "path": path, "ids": ids, "map": clone_map, "base_path": demo_data["tokenizer"],
          "base": spm.SentencePieceProcessor(model_file=demo_data["tokenizer"]),
          "clone": spm.SentencePieceProcessor(model_file=path),
          "records": [json.loads(line) for line in open(demo_data["train"])]}


def test_clone_tokenization_is_exact_and_invertible(cloned):
  base, tok, ids, cmap = cloned["base"], cloned["clone"], cloned["ids"], cloned["map"]
  # Every script of the demo corpus (13 languages), 40 documents each.
  by_lang = {}
  for r in cloned["records"]:
    by_lang.setdefault(r["lang"], []).append(r["text"])
  texts = [t for docs in by_lang.values() for t in docs[:40]] + ["ﬁne  Café… ½ 𝔘nicode", "x\ny"]
  for text in texts:
    source = base.encode(text)
    got = tok.encode(cmap.clone(text))
    assert got == ids[source].tolist(), text
    assert cmap.unclone(tok.decode(got)) == base.decode(source)
  # The map: a bijection from source pieces onto fresh ids, shared pieces unchanged.
  n = base.vocab_size()
  moved = ids != np.arange(n)
  assert len(set(ids[moved].tolist())) == moved.sum() and ids[moved].min() >= n
  assert tok.vocab_size() == n + moved.sum()
  for i in np.nonzero(~moved)[0]:
    assert base.IsControl(int(i)) or base.IsByte(int(i)) or base.IsUnknown(int(i)) or base.id_to_piece(int(i)) == "▁"
  for i in np.nonzero(moved)[0][:200]:
    assert cmap.unclone(tok.id_to_piece(int(ids[i]))) == base.id_to_piece(int(i))
    assert cmap.is_clone(tok.id_to_piece(int(ids[i])).replace("▁", ""))
  np.testing.assert_array_equal(clone.clone_id_map(cloned["base_path"], cloned["path"]), ids)


def test_clone_testbed_command(demo_data, tmp_path, capsys):
  from polyglot_jax.cli import main
  out = tmp_path / "clone"
  assert main(["data", "clone", "--tokenizer", demo_data["tokenizer"], "--input", demo_data["train"],
               "--lang", "en", "--out", str(out), "--min_count", "3"]) == 0
  printed = capsys.readouterr().out
  manifest = json.loads((out / "manifest.json").read_text())
  english = [json.loads(line)["text"] for line in open(demo_data["train"]) if json.loads(line)["lang"] == "eng"]
  assert manifest["records"] == len(english) and f"cloned {len(english)} 'eng' records as 'qen'" in printed
  cmap = clone.load_clone_map(str(out))
  tok = spm.SentencePieceProcessor(model_file=str(out / "clone.model"))
  base = spm.SentencePieceProcessor(model_file=demo_data["tokenizer"])
  rows = [json.loads(line) for line in open(out / "clone.jsonl")]
  assert [r["lang"] for r in rows] == ["qen"] * len(english)
  assert [cmap.unclone(r["text"]) for r in rows[:50]] == [cmap.normalize(t) for t in english[:50]]
  ids = clone.clone_id_map(demo_data["tokenizer"], str(out / "clone.model"))
  # The dictionary is exact at the token level and parses as word_groups records.
  from polyglot_jax.data import records
  groups = [json.loads(line) for line in open(out / "dictionary.jsonl")]
  assert len(groups) == manifest["dictionary_words"] > 50
  for g in groups:
    assert not isinstance(records.get_kind("word_groups").parse(g), records.Rejected)
    (src, src_lang), (tgt, tgt_lang) = [(w["text"], w["lang"]) for w in g["words"]]
    assert (src_lang, tgt_lang) == ("eng", "qen")
    assert tok.encode(tgt) == ids[base.encode(src)].tolist()
