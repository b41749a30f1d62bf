"""``polyglot-jax generate`` and ``polyglot-jax score``: JSONL in, JSONL out, any loadable model.

    polyglot-jax generate --model PATH --input prompts.jsonl --out out.jsonl [--max_new_tokens 64]
        [--temperature 0] [--top_k 0] [--top_p 1] [--stop "\\n"] [--seed 0] [--batch_size 16] [--step N]
        [--proxy_tuned SMALL_TUNED --proxy_untuned SMALL_BASE]
    polyglot-jax score --model PATH --input texts.jsonl --out scores.jsonl [--batch_size 16]

generate reads ``{"prompt": ...}`` records (other fields are copied to the
output) and writes ``{..., "completion", "completion_ids"}``. score reads
``{"text": ...}`` (the whole text is scored) or ``{"prompt", "completion"}``
(only the completion), and writes ``{..., "logp", "num_tokens",
"token_logps"}``. The model is anything ``polyglot_jax.load`` reads; its
SentencePiece tokenizer encodes and decodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json

from tqdm import tqdm

from polyglot_jax.data.jsonl import json_objects
from polyglot_jax.errors import DataError


def _records(path: str, what: str) -> list[tuple[int, dict]]:
  """(line number, record) of every non-blank line; a bad line is a DataError naming it."""
  return list(json_objects(path, what, "--input"))


def _parser(command: str, input_help: str, out_help: str) -> argparse.ArgumentParser:
  """The flags both commands share: the model, its step, the input and output files."""
  parser = argparse.ArgumentParser(prog=f"polyglot-jax {command}")
  parser.add_argument("--model", required=True, help="training workdir, converted workdir or Hugging Face directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step of a training workdir (default: newest)")
  parser.add_argument("--input", required=True, help=input_help)
  parser.add_argument("--out", required=True, help=out_help)
  parser.add_argument("--deactivate", default="", metavar="LAPE_JSON:LANG",
                      help="switch off one language's neurons (polyglot-jax analyze lape output)")
  return parser


def _load(args):
  import polyglot_jax
  loaded = polyglot_jax.load(args.model, args.step)
  if args.deactivate:
    from polyglot_jax.analysis.lape import deactivate_from_file
    loaded = dataclasses.replace(loaded, model=deactivate_from_file(loaded.model, args.deactivate))
  if loaded.tokenizer is None:
    raise DataError(f"{args.model} has no SentencePiece tokenizer to encode text with; train or convert a model "
                    "that ships one (tokenizer.model)")
  return loaded


def _batches(items, size):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def generate_main(argv: list[str]) -> int:
  from polyglot_jax.decode.generate import generate, generate_proxy
  parser = _parser("generate", 'JSONL of {"prompt": ...} records', "JSONL written with a completion per record")
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable); cut before it")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_len", type=int, default=0,
                      help="context length (default: the model's training seq_len); prompt + new tokens fit in it")
  parser.add_argument("--long_prompts", choices=("truncate", "refuse"), default="truncate",
                      help="a longer prompt keeps BOS and its last tokens (counted), or is an error naming its line")
  parser.add_argument("--template", default="alpaca", help="instruction records: template name (alpaca|plain)")
  parser.add_argument("--proxy_tuned", default="", help="proxy-tuning: a small tuned model (with --proxy_untuned)")
  parser.add_argument("--proxy_untuned", default="", help="proxy-tuning: the same small model before tuning")
  args = parser.parse_args(argv)
  if bool(args.proxy_tuned) != bool(args.proxy_untuned):
    parser.error("proxy-tuning needs both --proxy_tuned and --proxy_untuned")
  from polyglot_jax.data.records import CHAT_STOPS, Rejected, generation_prompt
  records = _records(args.input, "prompt")
  loaded = _load(args)
  tok = loaded.tokenizer
  prompts, kinds = [], []
  for lineno, record in records:
    rendered = generation_prompt(record, tok, args.template)
    if isinstance(rendered, Rejected):
      raise DataError(f"{args.input}:{lineno}: {rendered} (fields: {sorted(record)})")
    prompts.append([tok.bos_id()] + rendered[0])
    kinds.append(rendered[1])
  room = (args.max_len or int(loaded.config.data.seq_len)) - args.max_new_tokens
  if room < 2:
    raise DataError(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in a context of "
                    f"{args.max_len or loaded.config.data.seq_len} tokens; lower it or raise --max_len")
  truncated = 0
  for n, ((lineno, _), ids) in enumerate(zip(records, prompts)):
    if len(ids) > room:
      if args.long_prompts == "refuse":
        raise DataError(f"{args.input}:{lineno}: the prompt has {len(ids)} tokens; with --max_new_tokens "
                        f"{args.max_new_tokens} at most {room} fit the context; shorten it or use "
                        "--long_prompts truncate")
      prompts[n] = ids[:1] + ids[len(ids) - room + 1:]
      truncated += 1
  if truncated:
    print(f"{truncated} prompts longer than {room} tokens kept BOS and their last {room - 1} tokens", flush=True)
  eos = tok.eos_id()
  decode_fn = functools.partial(generate, loaded.model)
  if args.proxy_tuned:
    import polyglot_jax
    tuned, untuned = polyglot_jax.load(args.proxy_tuned).model, polyglot_jax.load(args.proxy_untuned).model
    decode_fn = functools.partial(generate_proxy, loaded.model, tuned, untuned)
  with open(args.out, "w", encoding="utf-8") as out:
    items = list(zip(records, prompts, kinds))
    for n, batch in enumerate(tqdm(list(_batches(items, args.batch_size)), desc="generate", unit="batch")):
      new = decode_fn([p for _, p, _ in batch], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, stop_ids=(eos,) if eos >= 0 else (), seed=args.seed + n)
      for ((_, record), _, kind), ids in zip(batch, new):
        ids = [i for i in ids if i != eos]
        text = tok.decode(ids)
        for stop in args.stop + (list(CHAT_STOPS) if kind == "chat" else []):
          if stop and stop in text:
            text = text[:text.index(stop)]
        out.write(json.dumps({**record, "completion": text, "completion_ids": ids}, ensure_ascii=False) + "\n")
  print(f"wrote {len(records)} completions to {args.out}", flush=True)
  return 0


def score_main(argv: list[str]) -> int:
  from polyglot_jax.decode.generate import score
  parser = _parser("score", 'JSONL of {"text"} or {"prompt", "completion"} records',
                   "JSONL written with log-probabilities per record")
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args(argv)
  records = _records(args.input, "text")
  loaded = _load(args)
  tok = loaded.tokenizer
  encoded = []
  for lineno, record in records:
    if isinstance(record.get("text"), str):
      ids = [tok.bos_id()] + tok.encode(record["text"]) + [tok.eos_id()]
      encoded.append((ids, 1))
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
      prompt = [tok.bos_id()] + tok.encode(record["prompt"])
      encoded.append((prompt + tok.encode(record["completion"]) + [tok.eos_id()], len(prompt)))
    else:
      raise DataError(f"{args.input}:{lineno}: needs a string 'text', or string 'prompt' and 'completion' "
                      f"(fields: {sorted(record)})")
  with open(args.out, "w", encoding="utf-8") as out:
    pairs = list(zip(records, encoded))
    for batch in tqdm(list(_batches(pairs, args.batch_size)), desc="score", unit="batch"):
      logps = score(loaded.model, [ids for _, (ids, _) in batch], [start for _, (_, start) in batch])
      for ((_, record), _), values in zip(batch, logps):
        out.write(json.dumps({**record, "logp": float(values.sum()), "num_tokens": int(len(values)),
                              "token_logps": [round(float(v), 6) for v in values]}, ensure_ascii=False) + "\n")
  print(f"wrote {len(records)} scores to {args.out}", flush=True)
  return 0
