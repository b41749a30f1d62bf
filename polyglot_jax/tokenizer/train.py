"""Train a SentencePiece tokenizer on text balanced across languages.

High-resource languages would otherwise take most of the vocabulary. Each
language's share of the training text is set to p ∝ n^α of its size n
(α = 0: equal shares; α = 1: proportional), repeating text of small languages
and subsampling large ones to meet it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from typing import Sequence

import numpy as np

SPECIAL_IDS = dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3)


def balanced_lines(records: Sequence[tuple[str, str]], alpha: float, seed: int = 0,
                   max_chars: int = 20_000_000) -> tuple[list[str], dict[str, int]]:
  """Lines sampled so that language l gets a share ∝ chars_l ** alpha.

  Returns:
    (lines, characters taken per language).
  """
  by_lang: dict[str, list[str]] = defaultdict(list)
  for text, lang in records:
    by_lang[lang].extend(line for line in text.split("\n") if line.strip())
  sizes = {lang: sum(len(x) for x in lines) for lang, lines in by_lang.items()}
  weights = {lang: n ** alpha for lang, n in sizes.items()}
  total_w = sum(weights.values())
  budget = min(sum(sizes.values()), max_chars)
  rng = np.random.default_rng(seed)
  out: list[str] = []
  taken: dict[str, int] = {}
  for lang in sorted(by_lang):
    target = budget * weights[lang] / total_w
    lines = by_lang[lang]
    got = 0
    while got < target:
      for i in rng.permutation(len(lines)):
        out.append(lines[i])
        got += len(lines[i])
        if got >= target:
          break
    taken[lang] = got
  rng.shuffle(out)
  return out, taken


def train_sentencepiece(records: Sequence[tuple[str, str]], model_prefix: str, vocab_size: int,
                        model_type: str = "unigram", alpha: float = 0.3, byte_fallback: bool = True,
                        character_coverage: float = 0.9995, seed: int = 0, num_threads: int = 2,
                        **trainer_options) -> str:
  """Trains ``<model_prefix>.model``; returns its path.

  Args:
    records: (text, language code) pairs.
    model_prefix: output path without extension.
    vocab_size: pieces in the vocabulary (including specials and 256 bytes).
    model_type: unigram | bpe.
    alpha: language-sampling temperature exponent.
    byte_fallback: unknown characters become UTF-8 byte pieces, never <unk>.
    character_coverage: share of characters that get pieces of their own; rare
      characters beyond it are spelled in bytes (with byte_fallback).
    **trainer_options: passed to SentencePieceTrainer (e.g. hard_vocab_limit).
  """
  import sentencepiece as spm
  lines, taken = balanced_lines(records, alpha, seed)
  logging.info("tokenizer training text per language (chars): %s", taken)
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
    f.write("\n".join(lines))
    text_path = f.name
  try:
    _train_or_explain(
        spm,
        input=text_path, model_prefix=model_prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=byte_fallback, split_digits=True,
        num_threads=num_threads, input_sentence_size=2_000_000, shuffle_input_sentence=True,
        max_sentence_length=8192, minloglevel=2, **SPECIAL_IDS, **trainer_options)
  finally:
    os.unlink(text_path)
  return model_prefix + ".model"


def _train_or_explain(spm, **kwargs) -> None:
  """Runs the SentencePiece trainer; its known refusals become one-line DataErrors."""
  from polyglot_jax.errors import DataError
  try:
    spm.SentencePieceTrainer.train(**kwargs)
  except RuntimeError as e:
    message = str(e)
    if "Vocabulary size is smaller than required_chars" in message:
      needed = message.split("vs")[-1].split(".")[0].strip()
      raise DataError(
          f"vocab_size={kwargs['vocab_size']} is smaller than the {needed} characters the text needs at "
          f"character_coverage={kwargs['character_coverage']}; raise vocab_size or lower character_coverage "
          "(byte fallback spells the rest)") from None
    if "Vocabulary size too high" in message:
      raise DataError(f"vocab_size={kwargs['vocab_size']} is more than this text can fill; lower it") from None
    raise
