"""The logit lens on translation prompts (Wendler et al. 2024, "Do Llamas work in English?").

Every layer's residual stream at the last prompt position is read out as if
it were the last layer: ``softmax(logits(final_norm(h_i)))``. On a prompt
such as ``Français: "fleur" - 中文: "`` the next token should start the
target word (花); the lens shows, per layer, how much probability goes to
tokens that start the target-language word, how much to tokens that start
the English word (flower), and how spread out the distribution is.
"""

from __future__ import annotations

import functools
import random
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

# Token rows are padded up to a multiple of this (one compile per width, not per prompt length).
_WIDTH_BUCKET = 32
SPACE = "\u2581"  # SentencePiece's word-start marker.


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _layer_probs(graphdef, state, tokens_BxL, segment_ids_BxL, last_B):
  """[num_layers + 1, B, V] float32: the lens distribution of every layer at each row's last token."""
  model = nnx.merge(graphdef, state)
  _, aux = model(tokens_BxL, segment_ids_BxL, return_aux=("hidden_states",))
  h_NxBxLxE = aux["hidden_states"]
  h_NxBxE = h_NxBxLxE[:, jnp.arange(tokens_BxL.shape[0]), last_B]
  # logits() reads [B, L, E]; the layers axis stands in for the batch axis here.
  return jax.nn.softmax(model.logits(model.final_norm(h_NxBxE)).astype(jnp.float32), axis=-1)


def _batch(token_ids: Sequence[Sequence[int]], rows: int):
  width = -(-max(len(s) for s in token_ids) // _WIDTH_BUCKET) * _WIDTH_BUCKET
  tokens = np.zeros((rows, width), np.int32)
  segments = np.zeros((rows, width), np.int32)
  last = np.zeros((rows,), np.int32)
  for i, seq in enumerate(token_ids):
    if not len(seq):
      raise ValueError("logit lens: every prompt needs at least one token")
    tokens[i, :len(seq)] = seq
    segments[i, :len(seq)] = 1
    last[i] = len(seq) - 1
  return jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(last)


def _batch_probs(model, token_ids: Sequence[Sequence[int]], rows: int) -> np.ndarray:
  graphdef, state = nnx.split(model)
  return np.asarray(_layer_probs(graphdef, state, *_batch(token_ids, rows)))


def layer_distributions(model, token_ids: Sequence[int]) -> np.ndarray:
  """The logit lens at the last position of one sequence.

  Args:
    model: a ``Decoder``.
    token_ids: the prompt's token ids (a BOS first, if the model expects one).

  Returns:
    float32 [num_layers + 1, V]: row 0 reads the embedding output, row i the
    output of block i; each is ``softmax(model.logits(model.final_norm(h_i)))``
    (the last row equals the model's own next-token distribution).
  """
  return _batch_probs(model, [list(map(int, token_ids))], 1)[:, 0]


def word_token_sets(tokenizer, word: str) -> set[int]:
  """The ids of tokens that could start ``word`` as the next token.

  The rule (Wendler et al.'s, made explicit): a token counts when its piece,
  with a leading ``▁`` removed, is a non-empty prefix of ``word`` (so
  ``▁flow`` and ``fl`` count for "flower"); also the first token of
  ``tokenizer.encode(word)`` that is not a bare ``▁``, and the byte-fallback
  piece ``<0xXX>`` of the word's first UTF-8 byte when the vocabulary has
  one (a CJK word often starts with it). The unknown token never counts.

  Args:
    tokenizer: a SentencePieceProcessor.
    word: the word, without surrounding spaces.

  Returns:
    A set of token ids (non-empty for a non-empty word).
  """
  word = word.strip()
  if not word:
    return set()
  unk = tokenizer.unk_id()
  ids = set()
  candidates = [word[:i] for i in range(1, len(word) + 1)]
  candidates += [SPACE + c for c in candidates]
  candidates.append(f"<0x{word.encode('utf-8')[0]:02X}>")
  for piece in candidates:
    i = tokenizer.piece_to_id(piece)
    if i != unk and tokenizer.id_to_piece(i) == piece:
      ids.add(int(i))
  for i in tokenizer.encode(word):
    if tokenizer.id_to_piece(i) != SPACE:
      if i != unk:
        ids.add(int(i))
      break
  return ids


def lens(model, tokenizer, items: Sequence[dict], *, batch_size: int = 8, add_bos: bool = True,
         progress: bool = False) -> dict:
  """Per layer, the probability of the target word, of the English word, and the entropy, averaged over items.

  Args:
    model: a ``Decoder``.
    tokenizer: its SentencePieceProcessor.
    items: dicts with ``prompt``, ``target_word`` and ``english_word`` (``translation_items``).
    batch_size: prompts per forward pass.
    add_bos: put the tokenizer's BOS before each prompt.
    progress: show a tqdm bar.

  Returns:
    {"layers": [0..num_layers], "target_prob", "english_prob", "entropy": per-layer
    means over items (entropy in nats), "target_prob_std", "english_prob_std",
    "num_items"}. Layer 0 is the embedding output, the last layer the model's
    own output distribution. A word's probability is the summed probability
    of its ``word_token_sets``.
  """
  items = list(items)
  if not items:
    raise ValueError("logit lens: no items")
  bos = [tokenizer.bos_id()] if add_bos and tokenizer.bos_id() >= 0 else []
  target_mass, english_mass, entropy = [], [], []
  starts = range(0, len(items), batch_size)
  for start in tqdm(starts, desc="logit lens", unit="batch", disable=not progress):
    batch = items[start:start + batch_size]
    probs_NxBxV = _batch_probs(model, [bos + tokenizer.encode(it["prompt"]) for it in batch], batch_size)
    for b, item in enumerate(batch):
      p_NxV = probs_NxBxV[:, b].astype(np.float64)
      target_mass.append(p_NxV[:, sorted(word_token_sets(tokenizer, item["target_word"]))].sum(-1))
      english_mass.append(p_NxV[:, sorted(word_token_sets(tokenizer, item["english_word"]))].sum(-1))
      logs = np.log(p_NxV, out=np.zeros_like(p_NxV), where=p_NxV > 0)
      entropy.append(-(p_NxV * logs).sum(-1))
  target, english, ent = np.stack(target_mass), np.stack(english_mass), np.stack(entropy)
  return {"layers": list(range(target.shape[1])), "target_prob": target.mean(0).tolist(),
          "english_prob": english.mean(0).tolist(), "entropy": ent.mean(0).tolist(),
          "target_prob_std": target.std(0).tolist(), "english_prob_std": english.std(0).tolist(),
          "num_items": len(items)}


def language_name(code: str) -> str:
  """The language's own name for itself from CLDR, capitalised: fr → Français, zh → 中文."""
  import babel
  from polyglot_jax.errors import DataError
  try:
    name = babel.Locale.parse(code).get_display_name(code)
  except (babel.UnknownLocaleError, ValueError):
    raise DataError(f"language '{code}' is not a CLDR locale babel knows; use a code such as fr, zh, de") from None
  return name[:1].upper() + name[1:]


def _cldr_words(code: str, categories: Sequence[str]) -> dict[str, str]:
  """(category:code) → the locale's name for it: two-letter territory and language codes only."""
  import babel
  locale = babel.Locale.parse(code)
  words = {}
  for category in categories:
    names = getattr(locale, category)
    for key, name in names.items():
      if len(key) == 2 and key.isalpha():
        words[f"{category}:{key}"] = name
  return words


def translation_items(source_lang: str, target_lang: str, k_shot: int = 4, *, limit: int | None = None,
                      seed: int = 0, categories: Sequence[str] = ("territories", "languages"),
                      tokenizer=None) -> list[dict]:
  """Few-shot word-translation prompts built from CLDR names (babel).

  The words are CLDR's names of territories and languages (two-letter codes)
  in the source locale, the target locale and English, aligned by code. A
  word is kept when all three names exist and are single words (no
  whitespace), and the target name differs from the English one
  (case-insensitively, unless the target is English); with ``tokenizer``,
  also only when their ``word_token_sets`` do not overlap, so the two curves
  count different tokens. Each prompt is ``k_shot`` example lines and the
  query::

      Français: "Chine" - 中文: "中国"
      ...
      Français: "Allemagne" - 中文: "

  Args:
    source_lang: CLDR code of the prompt's source language (e.g. fr).
    target_lang: CLDR code of the language to translate into (e.g. zh).
    k_shot: example lines before the query (drawn from the other words).
    limit: keep at most this many items (a seeded random choice).
    seed: seeds the choice of items and of examples.
    categories: babel ``Locale`` attributes to take names from.
    tokenizer: a SentencePieceProcessor for the token-overlap filter, or None.

  Returns:
    Dicts with ``prompt``, ``source_word``, ``target_word``, ``english_word`` and ``code``.
  """
  from polyglot_jax.errors import DataError
  src_name, tgt_name = language_name(source_lang), language_name(target_lang)
  src, tgt, eng = (_cldr_words(c, categories) for c in (source_lang, target_lang, "en"))
  pool = []
  for key in sorted(set(src) & set(tgt) & set(eng)):
    words = (src[key], tgt[key], eng[key])
    if any(len(w.split()) != 1 for w in words):
      continue
    if target_lang != "en" and words[1].casefold() == words[2].casefold():
      continue
    if tokenizer is not None and target_lang != "en" and \
        word_token_sets(tokenizer, words[1]) & word_token_sets(tokenizer, words[2]):
      continue
    pool.append((key, *words))
  if len(pool) < k_shot + 1:
    raise DataError(f"only {len(pool)} CLDR words fit {source_lang} → {target_lang}; need more than k_shot={k_shot}")
  rng = random.Random(seed)
  chosen = list(range(len(pool)))
  if limit is not None and limit < len(pool):
    chosen = sorted(rng.sample(chosen, limit))

  def line(s, t):
    return f'{src_name}: "{s}" - {tgt_name}: "{t}"'

  items = []
  for i in chosen:
    key, s, t, e = pool[i]
    shots = rng.sample([j for j in range(len(pool)) if j != i], k_shot)
    lines = [line(pool[j][1], pool[j][2]) for j in shots]
    prompt = "\n".join(lines + [f'{src_name}: "{s}" - {tgt_name}: "'])
    items.append({"prompt": prompt, "source_word": s, "target_word": t, "english_word": e, "code": key})
  return items


def plot(result: dict, path: str, title: str = "") -> None:
  """Writes a PNG: target and English probability per layer (left axis) and entropy (right axis).

  Args:
    result: the dict ``lens`` returns.
    path: the PNG file to write.
    title: the figure title.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib.ticker import MaxNLocator
  layers = result["layers"]
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(layers, result["target_prob"], marker="o", label="target word")
  ax.plot(layers, result["english_prob"], marker="o", label="English word")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("layer (0 = embeddings)")
  ax.set_ylabel("probability")
  ax.set_ylim(0, 1)
  twin = ax.twinx()
  twin.plot(layers, result["entropy"], color="gray", linestyle="--", label="entropy (nats)")
  twin.set_ylabel("entropy (nats)")
  handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
  ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
