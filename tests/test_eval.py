"""The eval harness: a model trained to memorise the right answers scores 100%, figures match references."""

import json
import math

import numpy as np
import pytest

from polyglot_jax import decode
from polyglot_jax.eval import harness

XCOPA = {
    "it": [("L'uomo aprì il rubinetto.", "Il gabinetto si riempì.", "L'acqua uscì dal rubinetto.", "effect", 1),
           ("La ragazza era stanca.", "Andò a dormire presto.", "Corse una maratona.", "effect", 0)],
    "en": [("The man turned on the tap.", "The toilet filled up.", "Water came out of the tap.", "effect", 1),
           ("The girl was tired.", "She went to bed early.", "She ran a marathon.", "effect", 0)],
}
MGSM = {"en": [("Anna has 3 apples and buys 4 more. How many apples does she have?", "7"),
               ("A box holds 12 pens. How many pens are in 2 boxes?", "24")],
        "fr": [("Anna a 3 pommes et en achète 4. Combien de pommes a-t-elle ?", "7"),
               ("Une boîte contient 12 stylos. Combien de stylos dans 2 boîtes ?", "24")]}
FLORES = {"eng_Latn": ["The cat sleeps.", "We eat bread."], "fra_Latn": ["Le chat dort.", "Nous mangeons du pain."]}
# Training steps of the memorising model: its loss is on its floor (~0.05, the unpredictable first tokens) by
# step ~150 at this learning rate, and every answer is reproduced exactly from then on.
STEPS = 200


def write_tasks(root, flip_labels=False):
  """Task folders in the public layouts (XCOPA JSONL, MGSM TSV, FLORES line files, held-out text)."""
  paths = {}
  for name in ("xcopa", "mgsm", "flores", "text"):
    (root / name).mkdir(parents=True, exist_ok=True)
    paths[name] = str(root / name)
  for lang, items in XCOPA.items():
    with open(root / "xcopa" / f"val.{lang}.jsonl", "w") as f:
      for i, (premise, c1, c2, question, label) in enumerate(items):
        f.write(json.dumps({"premise": premise, "choice1": c1, "choice2": c2, "question": question,
                            "label": 1 - label if flip_labels else label, "idx": i}, ensure_ascii=False) + "\n")
  for lang, items in MGSM.items():
    (root / "mgsm" / f"mgsm_{lang}.tsv").write_text("".join(f"{q}\t{a}\n" for q, a in items), encoding="utf-8")
  for lang, lines in FLORES.items():
    (root / "flores" / f"{lang}.devtest").write_text("".join(l + "\n" for l in lines), encoding="utf-8")
  (root / "text" / "held_out.jsonl").write_text(
      "".join(json.dumps({"text": t, "lang": l}) + "\n" for l, ts in FLORES.items() for t in ts))
  return paths


def memorised_texts():
  """The right answers as training text, in the harness's prompt layouts."""
  from polyglot_jax.eval import formats
  texts = []
  import tempfile, pathlib
  with tempfile.TemporaryDirectory() as d:
    paths = write_tasks(pathlib.Path(d))
    for item in formats.read_xcopa(paths["xcopa"]):
      texts.append((item.lang, f"{item.context} {item.choices[item.label]}"))
  for lang, items in MGSM.items():
    texts += [(lang, f"Question: {q}\nStep-by-Step Answer: The answer is {a}.") for q, a in items]
  texts += [("fr", f"English: {s}\nFrench: {t}") for s, t in zip(FLORES["eng_Latn"], FLORES["fra_Latn"])]
  return texts


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
  """A tiny model trained until it has memorised the answers; the eval harness runs at its end (config.evaluation)."""
  from conftest import tiny_config
  from polyglot_jax.train.trainer import train_and_evaluate
  root = tmp_path_factory.mktemp("eval")
  paths = write_tasks(root / "tasks")
  train = root / "train.jsonl"
  with open(train, "w") as f:
    for lang, text in memorised_texts():
      f.write(json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n")
  config = tiny_config(demo_data, data__train_files=(str(train),), data__eval_files=(), model__d_model=64,
                       model__mlp_dim=128, optimizer__learning_rate=1e-2, optimizer__warmup_steps=5,
                       train__num_steps=STEPS, train__log_every_steps=100, data__seq_len=128, checkpoint__every_steps=1000,
                       evaluation__tasks=tuple(f"{n}={paths[n]}" for n in ("xcopa", "mgsm", "flores")),
                       evaluation__batch_size=4, evaluation__max_new_tokens=16)
  workdir = str(root / "run")
  summary = train_and_evaluate(config, workdir)
  return {"workdir": workdir, "paths": paths, "root": root, "summary": summary}


def test_memorised_answers_score_full_marks_during_training(trained):
  results = trained["summary"]["evaluation"]
  assert {lang: row["acc"] for lang, row in results["xcopa"]["per_language"].items()} == {"it": 1.0, "en": 1.0}
  assert results["xcopa"]["consistency"]["all_languages"] == 1.0
  assert {lang: row["acc"] for lang, row in results["mgsm"]["per_language"].items()} == {"en": 1.0, "fr": 1.0}
  assert results["flores"]["per_language"]["eng_Latn-fra_Latn"]["chrf++"] == pytest.approx(100.0)
  assert "spBLEU not computed" in results["flores"]["metrics"]
  written = json.load(open(f"{trained['workdir']}/evaluation/step_{STEPS}/results.json"))
  assert written["tasks"]["xcopa"]["mean"] == 1.0
  assert (trained["root"] / "run" / "evaluation" / f"step_{STEPS}" / "xcopa.png").stat().st_size > 1000


def test_eval_command_figures_match_references(trained, tmp_path, capsys):
  """A wrong answer key scores 0; accuracy and perplexity agree with decode.score computed here."""
  import polyglot_jax
  from polyglot_jax import cli
  from polyglot_jax.eval import formats
  flipped = write_tasks(tmp_path / "flipped", flip_labels=True)
  out = tmp_path / "out"
  assert cli.main(["eval", "--model", trained["workdir"], "--out", str(out), "--batch_size", "4",
                   "--tasks", f"xcopa={flipped['xcopa']}", f"perplexity={trained['paths']['text']}"]) == 0
  printed = capsys.readouterr().out
  assert "xcopa (acc" in printed and "perplexity (ppl" in printed
  results = json.load(open(out / "results.json"))["tasks"]
  assert results["xcopa"]["mean"] == 0.0
  loaded = polyglot_jax.load(trained["workdir"])
  tok = loaded.tokenizer
  # acc_norm from the same sums divided by the choices' character counts.
  items = formats.read_xcopa(flipped["xcopa"])
  for lang in ("it", "en"):
    right = 0
    for item in [x for x in items if x.lang == lang]:
      ctx = tok.encode(item.context)
      sums = [decode.score(loaded.model, [[tok.bos_id()] + ctx + tok.encode(" " + c)], [1 + len(ctx)])[0].sum()
              for c in item.choices]
      right += int(np.argmax(np.asarray(sums) / [len(c) for c in item.choices])) == item.label
    assert results["xcopa"]["per_language"][lang]["acc_norm"] == right / 2
  for lang, lines in FLORES.items():
    nll, count = 0.0, 0
    for line in lines:
      ids = [tok.bos_id()] + tok.encode(line) + [tok.eos_id()]
      logits = np.asarray(loaded.model(np.asarray([ids], np.int32)))[0]
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
          - logits.max(-1, keepdims=True)
      nll -= sum(logp[t - 1, ids[t]] for t in range(1, len(ids)))
      count += len(ids) - 1
    row = results["perplexity"]["per_language"][lang]
    assert row["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert row["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(l.encode()) for l in lines), rel=1e-4)
  assert (out / "xcopa.png").exists() and (out / "table.txt").exists()


def test_unencodable_languages_and_truncation_are_reported(trained, tmp_path):
  import polyglot_jax
  loaded = polyglot_jax.load(trained["workdir"])
  text = tmp_path / "text"
  text.mkdir()
  (text / "amh.txt").write_text("ሰላም ለዓለም። እንዴት ነህ፧\nአዲስ አበባ ትልቅ ከተማ ናት።\n", encoding="utf-8")
  (text / "eng.txt").write_text("The cat sleeps on the mat in the kitchen of the house.\n", encoding="utf-8")
  options = harness.EvalOptions(batch_size=2, max_len=8)
  results = harness.evaluate_model(loaded.model, loaded.tokenizer, [("perplexity", str(text)),
                                                                   ("xcopa", trained["paths"]["xcopa"])], options)
  assert list(results["perplexity"]["unencodable"]) == ["amh"]
  assert results["perplexity"]["unencodable"]["amh"] > 0.5
  assert list(results["perplexity"]["per_language"]) == ["eng"]
  assert results["xcopa"]["truncated"] == 8  # Every (item, choice) sequence is longer than 8 tokens.
  assert "not scored" in harness.table(results)


def test_bad_task_names_are_one_line_errors():
  from polyglot_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="eval task 'xcopaa' is unknown"):
    harness.parse_tasks(["xcopaa=dir"])
  with pytest.raises(ConfigError, match="needs the form name=path"):
    harness.parse_tasks(["xcopa"])
  assert harness.parse_tasks(["xcopa=a,mgsm=b", "flores=c"]) == [("xcopa", "a"), ("mgsm", "b"), ("flores", "c")]


def test_eval_with_a_language_neurons_deactivated(trained, tmp_path):
  """--deactivate PATH:LANG scores the copy lape.deactivate makes; the base model is untouched."""
  import polyglot_jax
  from polyglot_jax import cli
  from polyglot_jax.analysis import lape
  loaded = polyglot_jax.load(trained["workdir"])
  neurons = {"0": list(range(0, 128, 2)), "1": list(range(1, 128, 2))}
  (tmp_path / "lape.json").write_text(json.dumps({"neurons": {"fr": neurons}}))
  task = [("perplexity", trained["paths"]["text"])]
  base = harness.evaluate_model(loaded.model, loaded.tokenizer, task, progress=False)
  off = harness.evaluate_model(lape.deactivate(loaded.model, {0: neurons["0"], 1: neurons["1"]}), loaded.tokenizer,
                               task, progress=False)
  assert cli.main(["eval", "--model", trained["workdir"], "--out", str(tmp_path / "out"), "--tasks",
                   f"perplexity={trained['paths']['text']}", "--deactivate", f"{tmp_path / 'lape.json'}:fr"]) == 0
  written = json.load(open(tmp_path / "out" / "results.json"))["tasks"]["perplexity"]["per_language"]
  for lang, row in off["perplexity"]["per_language"].items():
    assert written[lang]["ppl"] == pytest.approx(row["ppl"], rel=1e-6)
  # Half the neurons off changes every figure.
  assert abs(off["perplexity"]["mean"] / base["perplexity"]["mean"] - 1) > 0.05
  assert cli.main(["eval", "--model", trained["workdir"], "--out", str(tmp_path / "out"), "--tasks",
                   f"perplexity={trained['paths']['text']}", "--deactivate", f"{tmp_path / 'lape.json'}:de"]) == 1
