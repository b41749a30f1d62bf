"""``polyglot-jax eval``: per-language benchmarks of any loadable model.

    polyglot-jax eval --model PATH --tasks xcopa=DIR mgsm=DIR flores=DIR perplexity=FILE --out DIR
        [--shots 0] [--mgsm_shots 0 --exemplars FILE] [--limit 0] [--batch_size 16]
        [--max_new_tokens 128] [--max_len 0] [--max_unknown 0.5] [--spbleu_model FILE] [--step N]
        [--deactivate LAPE_JSON:LANG]
    polyglot-jax eval crosslingual --task zsclt|clka --model PATH --source en --targets fr,qen --workdir DIR ...

Writes ``DIR/results.json``, ``DIR/table.txt`` and a PNG per task, and prints
the table. Task names and their file layouts: ``polyglot_jax.eval.formats``;
how each is scored: ``polyglot_jax.eval.harness``. ``eval crosslingual``
(fine-tune in one language, query in others): ``polyglot_jax.eval.crosslingual``.
"""

from __future__ import annotations

import argparse
import dataclasses

from polyglot_jax.errors import DataError


def main(argv: list[str]) -> int:
  if argv and argv[0] == "crosslingual":
    from polyglot_jax.eval import crosslingual
    return crosslingual.main(argv[1:])
  from polyglot_jax.eval import harness
  defaults = harness.EvalOptions()
  parser = argparse.ArgumentParser(prog="polyglot-jax eval")
  parser.add_argument("--model", required=True, help="training workdir, converted workdir or Hugging Face directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step of a training workdir (default: newest)")
  parser.add_argument("--tasks", nargs="+", required=True,
                      help="name=path entries; names: " + ", ".join(sorted(harness.formats.TASK_FORMATS)))
  parser.add_argument("--out", required=True, help="folder for results.json, table.txt and the plots")
  parser.add_argument("--deactivate", default="", metavar="LAPE_JSON:LANG",
                      help="switch off one language's neurons (polyglot-jax analyze lape output)")
  for field in dataclasses.fields(harness.EvalOptions):
    parser.add_argument(f"--{field.name}", type=type(getattr(defaults, field.name)),
                        default=getattr(defaults, field.name))
  args = parser.parse_args(argv)
  tasks = harness.parse_tasks(args.tasks)
  options = harness.EvalOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(harness.EvalOptions)})
  import polyglot_jax
  loaded = polyglot_jax.load(args.model, args.step)
  if loaded.tokenizer is None:
    raise DataError(f"{args.model} has no SentencePiece tokenizer to encode the tasks with; use a model that "
                    "ships one (tokenizer.model)")
  model = loaded.model
  if args.deactivate:
    from polyglot_jax.analysis.lape import deactivate_from_file
    model = deactivate_from_file(model, args.deactivate)
  results = harness.evaluate_model(model, loaded.tokenizer, tasks, options,
                                   max_len=int(loaded.config.data.seq_len))
  path = harness.write(results, args.out, {"model": args.model, "step": args.step, "deactivate": args.deactivate,
                                           "options": dataclasses.asdict(options)})
  print(harness.table(results), flush=True)
  print(f"wrote {path} and a plot per task", flush=True)
  return 0
