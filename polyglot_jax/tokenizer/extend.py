"""Extend a trained SentencePiece (unigram) model with pieces for new text,
and grow a checkpoint's embedding (and untied output head) to match.

New pieces come from a unigram model trained on the new text: the
highest-scoring pieces the old vocabulary lacks are appended with their
scores, so every old id keeps its meaning. Each new embedding row (and head
column) starts as the mean of the old rows of the pieces the *old* tokenizer
splits the new piece into (byte fallback guarantees there are some), so the
model starts from what it already knows about that text.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

WORD_START = "\u2581"  # SentencePiece's word-boundary marker.


def read_unigram_model(path: str, what: str):
  """The ModelProto of a SentencePiece unigram model; another model type is a DataError naming ``what`` needs it."""
  from sentencepiece import sentencepiece_model_pb2 as pb

  from polyglot_jax.errors import DataError
  proto = pb.ModelProto()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  if proto.trainer_spec.model_type != pb.TrainerSpec.UNIGRAM:
    raise DataError(f"{what} needs a unigram SentencePiece model; '{path}' is "
                    f"{pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)}")
  return proto


def add_pieces(old_model: str, records, num_pieces: int, out_prefix: str, seed: int = 0) -> tuple[str, list[str]]:
  """Writes ``out_prefix.model`` = old model + up to ``num_pieces`` new pieces; returns (path, new pieces)."""
  from sentencepiece import sentencepiece_model_pb2 as pb

  from polyglot_jax.tokenizer.train import train_sentencepiece
  proto = read_unigram_model(old_model, "tokenizer extend")
  existing = {p.piece for p in proto.pieces}
  with tempfile.TemporaryDirectory() as tmp:
    helper_size = num_pieces + 256 + 4 + 64
    helper = train_sentencepiece(records, os.path.join(tmp, "new"), helper_size, alpha=1.0,
                                 character_coverage=1.0, seed=seed, hard_vocab_limit=False)
    new = pb.ModelProto()
    with open(helper, "rb") as f:
      new.ParseFromString(f.read())
  candidates = sorted((p for p in new.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL
                       and p.piece not in existing), key=lambda p: -p.score)[:num_pieces]
  for p in candidates:
    proto.pieces.add(piece=p.piece, score=p.score, type=pb.ModelProto.SentencePiece.NORMAL)
  path = out_prefix + ".model"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(proto.SerializeToString())
  return path, [p.piece for p in candidates]


def old_piece_ids(old_processor, piece: str) -> list[int]:
  """Ids of the old pieces that spell ``piece`` (a word-internal piece drops the lone '▁' encode adds)."""
  ids = old_processor.encode(piece.replace(WORD_START, " "))
  if not piece.startswith(WORD_START) and ids and old_processor.id_to_piece(ids[0]) == WORD_START:
    ids = ids[1:]
  return ids


def grow_rows(table_VxE: np.ndarray, new_ids: list[int], sources: list[list[int]], vocab_size: int) -> np.ndarray:
  """Table with ``vocab_size`` rows; row new_ids[i] = mean of old rows sources[i]."""
  out = np.zeros((vocab_size,) + table_VxE.shape[1:], table_VxE.dtype)
  out[:len(table_VxE)] = table_VxE
  for new_id, src in zip(new_ids, sources):
    out[new_id] = table_VxE[src].mean(axis=0)
  return out


def grow_params(params: dict, old_processor, new_processor, first_new_id: int, vocab_size: int) -> dict:
  """Copies ``params`` with embedding rows / head columns for ids ≥ first_new_id initialised."""
  new_ids = list(range(first_new_id, new_processor.vocab_size()))
  sources = [old_piece_ids(old_processor, new_processor.id_to_piece(i)) for i in new_ids]
  out = dict(params)
  out["embedding"] = grow_rows(np.asarray(params["embedding"]), new_ids, sources, vocab_size)
  if "lm_head" in params:
    out["lm_head"] = grow_rows(np.asarray(params["lm_head"]).T, new_ids, sources, vocab_size).T
  return out


def extend_checkpoint(workdir: str, new_workdir: str, old_model: str, new_model: str) -> dict:
  """Writes ``new_workdir``: the newest checkpoint of ``workdir`` with the vocabulary grown.

  The step, optimizer state (new rows start at zero moments) and PRNG key
  carry over; the data iterator starts fresh (the new run reads new data).
  ``new_workdir/config.json`` is the old config with ``model.vocab_size`` and
  ``data.tokenizer`` updated. The rewrite itself is ``train.surgery``'s.

  Returns:
    {"step", "vocab_size", "new_pieces"}.
  """
  import sentencepiece as spm

  from polyglot_jax.train.surgery import pad_rows, rewrite_checkpoint
  old, new = spm.SentencePieceProcessor(model_file=old_model), spm.SentencePieceProcessor(model_file=new_model)
  sizes = {}

  def grow(config, state):
    vocab_size = max(config.model.vocab_size, new.vocab_size())
    sizes["vocab"] = vocab_size
    params = grow_params(state.params, old, new, old.vocab_size(), vocab_size)
    opt_state = pad_rows(pad_rows(state.opt_state, "embedding", 0, vocab_size), "lm_head", 1, vocab_size)
    config.model.vocab_size = vocab_size
    config.data.tokenizer = os.path.abspath(new_model)
    return config, params, opt_state

  info = rewrite_checkpoint(workdir, new_workdir, grow)
  return {"step": info["step"], "vocab_size": sizes["vocab"], "new_pieces": new.vocab_size() - old.vocab_size()}
