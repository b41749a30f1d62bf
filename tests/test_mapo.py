"""MAPO pair selection on hand-built cases; preference records from injected model calls."""

import json
import math

import pytest

from polyglot_jax.data import mapo
from polyglot_jax.errors import DataError


def test_select_pair_takes_the_best_aligned_correct_answer_and_the_worst_below_it():
  texts = ["a 7", "b 7", "c 8", "d 9"]
  # Correct: 0 and 1; 1 is better aligned. Lower than 1: 0, 2 and 3; 3 is the lowest.
  assert mapo.select_pair([True, True, False, False], [0.5, 0.9, 0.7, 0.1], texts) == (1, 3)
  # A correct answer may be the rejected one when it is the worst aligned.
  assert mapo.select_pair([True, True, False], [0.9, 0.2, 0.5], texts[:3]) == (0, 1)
  assert mapo.select_pair([False, False], [0.9, 0.2], texts[:2]) == mapo.NO_CORRECT
  assert mapo.select_pair([True, False], [0.1, 0.9], texts[:2]) == mapo.NO_LOWER
  assert mapo.select_pair([True, True], [0.5, 0.5], texts[:2]) == mapo.NO_LOWER  # Ties are not lower.
  assert mapo.select_pair([True, False], [0.9, 0.2], ["same 7", " same 7"]) == mapo.SAME_TEXT


def test_alignment_is_the_inverse_mean_cross_entropy():
  assert mapo.alignment_score([-1.0, -3.0]) == pytest.approx(0.5)
  assert mapo.alignment_score([-0.25]) == pytest.approx(4.0)
  assert mapo.alignment_score([0.0]) == math.inf


def test_build_preferences_with_injected_calls():
  items = [{"id": "1", "lang": "fr", "question": "q1", "answer": 7, "en_question": "e1"},
           {"id": "2", "lang": "de", "question": "q2", "answer": 3, "en_question": "e2"}]
  samples = {"q1": ["x 7", "y 7", "z 5"], "q2": ["u 4", "v 5", "w 6"]}
  alignment = {("x 7", "E:e1"): 0.3, ("y 7", "E:e1"): 0.8, ("z 5", "E:e1"): 0.1,
               ("u 4", "E:e2"): 0.5, ("v 5", "E:e2"): 0.4, ("w 6", "E:e2"): 0.2}
  records, reasons = mapo.build_preferences(
      items, english_answer=lambda qs: [f"E:{q}" for q in qs], sample=lambda qs: [samples[q] for q in qs],
      align=lambda pairs: [alignment[p] for p in pairs],
      is_correct=lambda text, answer: text.endswith(str(answer)), prompt_of=lambda q: f"Q: {q}\nA:")
  assert records == [{"prompt": "Q: q1\nA:", "chosen": "y 7", "rejected": "z 5", "lang": "fr", "id": "1",
                      "alignment_chosen": 0.8, "alignment_rejected": 0.1, "english_answer": "E:e1"}]
  assert reasons == {mapo.NO_CORRECT: 1}
  # The records are the preference record kind.
  from polyglot_jax.data.records import Rejected, get_kind
  assert not isinstance(get_kind("preference").parse(records[0]), Rejected)


def test_bad_input_names_the_line(tmp_path):
  bad = tmp_path / "q.jsonl"
  bad.write_text(json.dumps({"id": "1", "lang": "fr", "question": "q", "answer": 3, "en_question": "e"}) + "\n"
                 + json.dumps({"id": "2", "lang": "fr", "question": "q"}) + "\n")
  with pytest.raises(DataError, match=r"q.jsonl:2: missing \['answer', 'en_question'\]"):
    mapo.main(["--model", "unused", "--input", str(bad), "--out", str(tmp_path / "o.jsonl")])
  bad.write_text(json.dumps({"id": "1", "lang": "en", "question": "q", "answer": 3, "en_question": "q"}) + "\n")
  with pytest.raises(DataError, match="no question in a language other than the pivot 'en'"):
    mapo.main(["--model", "unused", "--input", str(bad), "--out", str(tmp_path / "o.jsonl")])
