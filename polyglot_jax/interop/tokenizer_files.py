"""The tokenizer travels with the weights: copy its files, and check it fits the embedding.

Hugging Face directories carry a SentencePiece ``tokenizer.model`` (Llama,
Mistral), a ``tokenizer.json`` (fast tokenizers; Qwen2), or GPT-2 style
``vocab.json`` + ``merges.txt``, plus ``tokenizer_config.json`` and friends.
They are copied unchanged; our data pipeline reads the SentencePiece model.
"""

from __future__ import annotations

import json
import os
import shutil

from polyglot_jax.interop.hf_config import ConvertError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
SENTENCEPIECE_FILE = "tokenizer.model"


def present(src_dir: str) -> list[str]:
  """The tokenizer files found in ``src_dir``."""
  return [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, name))]


def _json_ids(path: str) -> list[int]:
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if os.path.basename(path) == "tokenizer.json":
    vocab = (data.get("model") or {}).get("vocab") or {}
    # Unigram stores [piece, score] pairs in id order; BPE/WordLevel a piece → id map.
    ids = list(range(len(vocab))) if isinstance(vocab, list) else list(vocab.values())
    ids += [t["id"] for t in data.get("added_tokens") or []]
    return ids
  return [int(i) for i in data.values()]  # vocab.json / added_tokens.json: piece → id.


def vocabulary_size(src_dir: str) -> tuple[int, str] | None:
  """(ids the tokenizer can emit = largest id + 1, the file that says so), or None without a tokenizer."""
  sizes = []
  path = os.path.join(src_dir, SENTENCEPIECE_FILE)
  if os.path.isfile(path):
    import sentencepiece as spm
    try:
      sizes.append((spm.SentencePieceProcessor(model_file=path).vocab_size(), SENTENCEPIECE_FILE))
    except (RuntimeError, OSError) as e:
      raise ConvertError(f"{path} is not a SentencePiece model ({e})") from None
  for name in ("tokenizer.json", "vocab.json", "added_tokens.json"):
    path = os.path.join(src_dir, name)
    if os.path.isfile(path):
      try:
        ids = _json_ids(path)
      except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConvertError(f"{path} could not be read as a tokenizer vocabulary ({e})") from None
      if ids:
        sizes.append((max(ids) + 1, name))
  return max(sizes) if sizes else None


def check_fits(src_dir: str, vocab_size: int) -> None:
  """Refuses a tokenizer that can emit ids at or past the embedding's ``vocab_size`` rows."""
  found = vocabulary_size(src_dir)
  if found and found[0] > vocab_size:
    size, name = found
    raise ConvertError(f"{os.path.join(src_dir, name)} has {size} tokens but the embedding has "
                       f"{vocab_size} rows (vocab_size); ids past {vocab_size - 1} would have no embedding")


def copy(src_dir: str, dst_dir: str, names: list[str] | None = None) -> list[str]:
  """Copies the tokenizer files of ``src_dir`` (or ``names`` from it) into ``dst_dir``; returns their names."""
  names = present(src_dir) if names is None else names
  if names:
    os.makedirs(dst_dir, exist_ok=True)
  for name in names:
    shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))
  return names
