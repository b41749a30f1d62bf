"""``polyglot-jax convert``: Hugging Face safetensors ↔ our orbax workdirs.

    polyglot-jax convert --from_hf HF_DIR --workdir OUT [--dtype float32|bfloat16]
    polyglot-jax convert --to_hf --workdir W [--step N] --out HF_DIR [--architecture llama|qwen2|mistral|mixtral]
"""

from __future__ import annotations

import argparse

from polyglot_jax.interop.convert import DTYPES, export_hf, import_hf
from polyglot_jax.interop.hf_config import SHORT_NAMES


def _train_hint(out: str, model: dict) -> str:
  shape = ", ".join(f"{k}={v}" for k, v in model.items())
  return (f"train from it: polyglot-jax train --config CONFIG --workdir RUN --config.init_from={out} "
          f"(the model's shape comes from there: {shape})")


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="polyglot-jax convert",
      description="Convert between Hugging Face safetensors checkpoints (Llama, Qwen2, Mistral, Mixtral) and our "
                  "workdirs.")
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from_hf", metavar="HF_DIR", help="import this HF model directory into --workdir")
  direction.add_argument("--to_hf", action="store_true", help="export --workdir to the HF directory --out")
  parser.add_argument("--workdir", required=True, help="our workdir: written by --from_hf, read by --to_hf")
  parser.add_argument("--out", help="--to_hf: the HF directory to write (new or empty)")
  parser.add_argument("--step", type=int, help="--to_hf: checkpoint step (default: newest, else params/)")
  parser.add_argument("--architecture", choices=sorted(SHORT_NAMES),
                      help="--to_hf: default: mixtral for an MoE model, else the imported one, else qwen2 if "
                           "model.qkv_bias, else llama")
  parser.add_argument("--dtype", choices=DTYPES,
                      help="parameter dtype written (default: float32 on import, the stored dtype on export)")
  parser.add_argument("--max_shard_gb", type=float, default=5.0, help="--to_hf: safetensors shard size limit")
  args = parser.parse_args(argv)
  if args.from_hf:
    for flag in ("out", "step", "architecture"):
      if getattr(args, flag) is not None:
        parser.error(f"--{flag} goes with --to_hf")
    info = import_hf(args.from_hf, args.workdir, args.dtype or "float32")
    if info["sliding_window"]:
      print(f"note: the model has sliding_window={info['sliding_window']}; it converts exactly for rows of at "
            f"most that many tokens (config.data.seq_len), which init_from checks")
    if not info["tokenizer"]:
      print("note: no SentencePiece tokenizer.model came with it; set config.data.tokenizer before training")
    print(_train_hint(args.workdir, info["model"]))
    return 0
  if not args.out:
    parser.error("--to_hf needs --out HF_DIR")
  if args.max_shard_gb <= 0:
    parser.error("--max_shard_gb must be positive")
  info = export_hf(args.workdir, args.out, args.step, args.architecture, args.dtype, args.max_shard_gb)
  print(f"wrote {args.out}: {info['architecture']}, {len(info['files'])} files; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained('{args.out}')")
  return 0
