"""English-Clone: a synthetic language whose every token is a fresh id with an exact English translation.

The clone of a text moves each character of the source tokenizer's
alphabet into the Unicode Private Use Area (``CloneMap``). The clone
tokenizer is the source tokenizer plus, for every normal piece, the piece
with its characters moved the same way (the word-start marker ``▁`` stays),
with the same score. Unigram segmentation then splits a cloned text exactly
as it splits the original, piece for piece, so

    clone_tokenizer.encode(clone_map.clone(s)) == clone_ids[tokenizer.encode(s)]

with ``clone_ids`` a fixed id map: a dictionary between the two languages
that is exact at the token level. Pieces that are only ``▁``, byte-fallback
and control pieces are shared by both languages (they have no characters to
move). The vocabulary about doubles: set ``model.vocab_size`` to the clone
tokenizer's size. Clone records carry the language code ``qen``
(``languages.py``), so per-token language ids mark the clone.

``polyglot-jax data clone`` writes the clone tokenizer, the cloned corpus
and the exact word dictionary (``word_groups`` records).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from polyglot_jax.errors import DataError

CLONE_CODE = "qen"
WORD_START = "\u2581"
_OFFSET = 0xE000
_PUA_SIZE = 0xF8FF - 0xE000 + 1


class CloneMap:
  """The character map of one source tokenizer: its alphabet ↔ the Private Use Area.

  ``alphabet`` holds every character of the tokenizer's normal pieces (not
  ``▁``); character k of it becomes U+E000 + k. Text is first normalised
  the way the tokenizer normalises it (NFKC, whitespace), so that what the
  tokenizer would rewrite is cloned in its rewritten form. Characters
  outside the alphabet stay as they are: the tokenizer spells them with
  byte-fallback pieces, which both languages share.
  """

  def __init__(self, alphabet: str, processor=None):
    if len(alphabet) > _PUA_SIZE:
      raise DataError(f"the tokenizer's pieces use {len(alphabet)} characters; English-Clone maps at most "
                      f"{_PUA_SIZE} (the Private Use Area)")
    self.alphabet = alphabet
    self.processor = processor
    self._to = {c: chr(_OFFSET + k) for k, c in enumerate(alphabet)}
    self._back = {v: k for k, v in self._to.items()}

  @classmethod
  def from_tokenizer(cls, model_file: str) -> "CloneMap":
    """The map of a SentencePiece model: its pieces' alphabet, normalised by the model."""
    import sentencepiece as spm
    processor = spm.SentencePieceProcessor(model_file=model_file)
    chars = set()
    for i in range(processor.vocab_size()):
      if not (processor.IsControl(i) or processor.IsUnknown(i) or processor.IsByte(i)):
        chars.update(processor.id_to_piece(i))
    chars.discard(WORD_START)
    return cls("".join(sorted(chars)), processor)

  def normalize(self, text: str) -> str:
    """The text as the tokenizer sees it (NFKC, whitespace collapsed), with spaces for ``▁``."""
    if self.processor is None:
      return text
    return self.processor.normalize(text).replace(WORD_START, " ").lstrip(" ")

  def clone(self, text: str) -> str:
    """The clone spelling of ``text``."""
    return "".join(self._to.get(c, c) for c in self.normalize(text))

  def piece(self, piece: str) -> str:
    """The clone of a tokenizer piece (``▁`` kept, no normalisation)."""
    return "".join(self._to.get(c, c) for c in piece)

  def unclone(self, text: str) -> str:
    """Inverse of ``clone`` (up to the tokenizer's normalisation)."""
    return "".join(self._back.get(c, c) for c in text)

  def is_clone(self, text: str) -> bool:
    """True when ``text`` holds no character of the source alphabet (only clone characters and others)."""
    return not any(c in self._to for c in text)


def make_clone_tokenizer(base_model: str, out_model: str) -> tuple[str, np.ndarray, CloneMap]:
  """Writes the clone tokenizer (base pieces, then each normal piece's clone) and returns (path, id map, char map).

  Args:
    base_model: a SentencePiece unigram model file.
    out_model: where to write the clone tokenizer (``.model``).

  Returns:
    (out_model, clone_ids, clone_map): ``clone_ids[i]`` is the clone id of
    base id i (i itself for pieces both languages share); ``clone_map``
    spells text in the clone.
  """
  from sentencepiece import sentencepiece_model_pb2 as pb

  from polyglot_jax.tokenizer.extend import read_unigram_model
  proto = read_unigram_model(base_model, "English-Clone")
  clone_map = CloneMap.from_tokenizer(base_model)
  n = len(proto.pieces)
  clone_ids = np.arange(n, dtype=np.int64)
  normal = pb.ModelProto.SentencePiece.NORMAL
  for i in range(n):
    piece = proto.pieces[i]
    cloned = clone_map.piece(piece.piece)
    if piece.type != normal or cloned == piece.piece:
      continue  # Control, byte and lone-``▁`` pieces: shared.
    clone_ids[i] = len(proto.pieces)
    proto.pieces.add(piece=cloned, score=piece.score, type=normal)
  os.makedirs(os.path.dirname(os.path.abspath(out_model)), exist_ok=True)
  with open(out_model, "wb") as f:
    f.write(proto.SerializeToString())
  return out_model, clone_ids, clone_map


def clone_id_map(base_model: str, clone_model: str) -> np.ndarray:
  """``clone_ids`` of an existing clone tokenizer (base id → clone id), read from the two models."""
  import sentencepiece as spm
  clone_map = CloneMap.from_tokenizer(base_model)
  base, clone = clone_map.processor, spm.SentencePieceProcessor(model_file=clone_model)
  out = np.arange(base.vocab_size(), dtype=np.int64)
  for i in range(base.vocab_size()):
    if base.IsControl(i) or base.IsUnknown(i) or base.IsByte(i):
      continue
    cid = clone.piece_to_id(clone_map.piece(base.id_to_piece(i)))
    if cid != clone.unk_id():
      out[i] = cid
  return out


def clone_records(records: Iterable[dict], clone_map: CloneMap, text_key: str = "text") -> list[dict]:
  """Records with ``text_key`` cloned and ``lang`` set to the clone's code."""
  return [dict(r, **{text_key: clone_map.clone(r[text_key]), "lang": CLONE_CODE}) for r in records]


def clone_dictionary(words: Iterable[str], clone_map: CloneMap, source_lang: str = "eng") -> list[dict]:
  """Exact ``word_groups`` records: each word with its clone."""
  return [{"words": [{"text": w, "lang": source_lang}, {"text": clone_map.clone(w), "lang": CLONE_CODE}]}
          for w in dict.fromkeys(words)]


def corpus_words(texts: Sequence[str], processor, min_count: int = 2, max_words: int = 0) -> list[str]:
  """Whole words of ``texts`` (space-separated, stripped of edge punctuation), most frequent first."""
  from collections import Counter
  counts = Counter()
  for text in texts:
    for raw in text.split():
      word = raw.strip(".,;:!?\"'()[]«»“”")
      if word and any(ch.isalpha() for ch in word):
        counts[word] += 1
  words = [w for w, c in counts.most_common() if c >= min_count and processor.encode(w)]
  return words[:max_words] if max_words else words


def write_clone(base_model: str, records: Sequence[dict], out_dir: str, min_count: int = 2,
                max_words: int = 0) -> dict:
  """Writes the English-Clone testbed: ``clone.model``, ``clone.jsonl`` (cloned records) and ``dictionary.jsonl``.

  Args:
    base_model: the source language's SentencePiece unigram model.
    records: ``{"text", "lang"}`` records of the source language, cloned as they are.
    out_dir: output folder.
    min_count: a corpus word enters the dictionary when it occurs at least this often.
    max_words: cap on dictionary words (0: no cap).

  Returns:
    counts and paths written (also in ``out_dir/manifest.json``).
  """
  import sentencepiece as spm
  os.makedirs(out_dir, exist_ok=True)
  model_path, clone_ids, clone_map = make_clone_tokenizer(base_model, os.path.join(out_dir, "clone.model"))
  cloned = clone_records(records, clone_map)
  with open(os.path.join(out_dir, "clone.jsonl"), "w") as f:
    for r in cloned:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  processor = spm.SentencePieceProcessor(model_file=base_model)
  words = corpus_words([r["text"] for r in records], processor, min_count, max_words)
  source_lang = records[0].get("lang", "eng") if records else "eng"
  with open(os.path.join(out_dir, "dictionary.jsonl"), "w") as f:
    for entry in clone_dictionary(words, clone_map, source_lang):
      f.write(json.dumps(entry, ensure_ascii=False) + "\n")
  manifest = {"tokenizer": model_path, "vocab_size": int(spm.SentencePieceProcessor(model_file=model_path)
                                                         .vocab_size()),
              "base_vocab_size": int(len(clone_ids)), "cloned_pieces": int((clone_ids != np.arange(len(clone_ids)))
                                                                         .sum()),
              "records": len(cloned), "dictionary_words": len(words), "clone_code": CLONE_CODE,
              "alphabet": clone_map.alphabet}
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def load_clone_map(out_dir: str) -> CloneMap:
  """The ``CloneMap`` of a folder ``write_clone`` wrote (the clone tokenizer normalises like its source)."""
  import sentencepiece as spm
  path = os.path.join(out_dir, "manifest.json")
  if not os.path.exists(path):
    raise DataError(f"{path} does not exist; write the testbed with `polyglot-jax data clone` first")
  with open(path) as f:
    manifest = json.load(f)
  return CloneMap(manifest["alphabet"], spm.SentencePieceProcessor(model_file=manifest["tokenizer"]))
