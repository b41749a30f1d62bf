"""``polyglot-jax <command>``: one entry point for every command.

    polyglot-jax train --config configs/demo.py --workdir DIR [--config.a.b=v ...]
    polyglot-jax train --gin_file gin/demo.gin --workdir DIR [--gin_bindings 'model.num_layers=4']
    polyglot-jax data mixture --config configs/demo.py [--workdir DIR] [--config.data.mixture.method=unimax]
    polyglot-jax tokenizer train --input 'corpus/*.jsonl' --output tok/spm --vocab_size 32000 --alpha 0.3
    polyglot-jax tokenizer report --tokenizer tok/spm.model --input parallel.jsonl --out tok/report
    polyglot-jax generate --model DIR --input prompts.jsonl --out completions.jsonl [--max_new_tokens 64]
    polyglot-jax score --model DIR --input texts.jsonl --out scores.jsonl
    polyglot-jax eval --model DIR --tasks xcopa=DIR mgsm=DIR flores=DIR --out results/
    polyglot-jax analyze logit-lens|lape --model DIR ...
    polyglot-jax moe upcycle --from DIR --workdir OUT --num_experts 4 --top_k 2 [--layers all] [--noise 0]
    polyglot-jax moe routing --model DIR --data texts.jsonl --out DIR [--max_docs N]
"""

from __future__ import annotations

import argparse
import logging
import sys

USAGE = ("polyglot-jax <command> [flags]; commands: train, data mixture|clean|synth-math|instruct|mapo|dictionary|clone, "
         "tokenizer train|report|extend, convert, plan, generate, score, eval [crosslingual], analyze logit-lens|lape, "
         "moe upcycle|routing")


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates --config.a.b=v / --config.a.b v flags from the rest."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise SystemExit(f"error: {arg} needs a value (--config.key=value)")
        body = f"{body}={argv[i + 1]}"
        i += 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _train(argv: list[str]) -> int:
  from polyglot_jax import configs as config_lib
  rest, overrides = _split_config_overrides(argv)
  parser = argparse.ArgumentParser(prog="polyglot-jax train")
  parser.add_argument("--config", help="ml_collections config file (configs/*.py)")
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s) binding the config sections")
  parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and config.json go here")
  args = parser.parse_args(rest)
  if bool(args.config) == bool(args.gin_file):
    parser.error("give exactly one of --config or --gin_file")
  if args.config:
    config = config_lib.load_config(args.config, overrides)
  else:
    from polyglot_jax import gin_config
    config = gin_config.config_from_gin(args.gin_file, args.gin_bindings)
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
  if config.init_from:
    # The network's shape comes from the checkpoint; only an explicit contradicting flag is an error.
    from polyglot_jax import loading
    loading.apply_init_from(config, [item.split("=", 1)[0] for item in overrides] + _gin_keys(args.gin_bindings))
    config_lib.validate(config)
  from polyglot_jax.train.trainer import train_and_evaluate
  train_and_evaluate(config, args.workdir)
  return 0


def _gin_keys(bindings: list[str]) -> list[str]:
  """Dotted config keys set by --gin_bindings ('model.d_model = 8' → model.d_model)."""
  return [b.split("=", 1)[0].strip() for b in bindings if "=" in b]


def _data(argv: list[str]) -> int:
  from polyglot_jax.data import commands
  rest, overrides = _split_config_overrides(argv)
  return commands.main(rest, overrides)


def _tokenizer(argv: list[str]) -> int:
  from polyglot_jax.tokenizer import commands
  return commands.main(argv)


def _convert(argv: list[str]) -> int:
  from polyglot_jax.interop import commands
  return commands.main(argv)


def _plan(argv: list[str]) -> int:
  from polyglot_jax.plan import commands
  rest, overrides = _split_config_overrides(argv)
  return commands.main(rest, overrides)


def _generate(argv: list[str]) -> int:
  from polyglot_jax.decode import commands
  return commands.generate_main(argv)


def _score(argv: list[str]) -> int:
  from polyglot_jax.decode import commands
  return commands.score_main(argv)


def _eval(argv: list[str]) -> int:
  from polyglot_jax.eval import commands
  return commands.main(argv)


def _analyze(argv: list[str]) -> int:
  from polyglot_jax.analysis import commands
  return commands.main(argv)


def _moe(argv: list[str]) -> int:
  from polyglot_jax.models import moe_commands
  return moe_commands.main(argv)


COMMANDS = {"train": _train, "data": _data, "tokenizer": _tokenizer, "convert": _convert, "plan": _plan,
            "generate": _generate, "score": _score, "eval": _eval, "analyze": _analyze, "moe": _moe}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"error: unknown command '{command}'; {USAGE}", file=sys.stderr)
    return 2
  from polyglot_jax import errors
  try:
    return COMMANDS[command](rest)
  except errors.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
