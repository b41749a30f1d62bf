"""Input-only code-switching (PreAlign): dictionary words in the input become translations; labels do not.

With probability ``config.data.code_switch.rate`` each dictionary word of a
text document is replaced in the *input* by one of its translations. The
labels keep the original text: the position before the switched span still
predicts the original word's first token, the positions inside the span
(whose targets are the translation's tokens 2..k) have loss weight 0, and the
span's last position predicts the next original token as usual. The model
reads foreign words in context but is never trained to write them.

Words. A word starts at a piece that begins with SentencePiece's "▁". A
dictionary word is its ``processor.encode(word)`` span (which begins with a
▁-piece), matched only as a whole word: the span must be followed by a piece
that starts a new word, or by the end of the document — "German" is not
switched inside "Germany", nor before a punctuation piece that is glued to
it ("German,"). Where several entries start at one word, the longest wins;
spans never overlap. A document of language L only switches words of L.

Draws. Every random choice is a pure function of (``code_switch.seed``, the
document's identity): the packed backend names a document by (language id,
index among that language's records); the streaming backends (grain, seqio)
by (host, position in the host's document stream) — the very number their
resume point stores, so a resumed stream makes the same switches as an
uninterrupted one.

Counts. A switch is counted per (document language, translation language).
The packed backend switches everything at start-up and logs the counts
(``TextData.switch_counts``); the streaming backends count a switch once the
row holding it has been handed out (``stream.StreamBatches.switch_counts``),
keep the counts in the data-iterator state (so they survive a resume) and log
the job's totals whenever that state is saved. Counts stay out of the batch:
the trainer logs only what the objective declares.

Dictionary. A JSONL file of ``word_pairs`` records (``{"src_text",
"tgt_text", "src_lang", "tgt_lang"}``, usable in both directions) or
``word_groups`` records (``{"words": [{"text", "lang"}, ...]}``, every word a
translation of every other). Bad lines are counted by reason and reported
with their first file:line; only a dictionary with no usable entry stops.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from ml_collections import ConfigDict

from polyglot_jax.data import languages as langs
from polyglot_jax.errors import ConfigError, DataError

WORD_START = "▁"
# Identity domains: a packed document and a streamed one never share a random stream.
PACKED, STREAMED = 0, 1


@dataclasses.dataclass(frozen=True)
class Switch:
  """One switched word: ``position`` is the input position whose target is the original first token."""
  position: int
  source: str  # Language of the document (and of the replaced word).
  target: str  # Language of the translation.


@dataclasses.dataclass
class SwitchedDocument:
  """A document after switching, as the row writer takes it (``rows.document_parts``)."""
  tokens: np.ndarray  # Input token ids (no bos/eos), translations in place.
  targets: np.ndarray  # What each input position predicts (the original text's tokens).
  weights: np.ndarray  # Loss weight of each target: 0 inside a switched span.
  switches: list[Switch]

  def as_doc(self, lang_id: int) -> tuple:
    return self.tokens, lang_id, self.weights, self.targets


# ---------------------------------------------------------------------------
# Dictionary → table
# ---------------------------------------------------------------------------


def read_dictionary(path: str) -> tuple[list[list[tuple[str, str]]], Counter]:
  """Word groups of a ``word_pairs`` / ``word_groups`` JSONL file (read by data/dictionaries.py).

  Args:
    path: the JSONL file.

  Returns:
    (list of groups, each a list of (word, canonical language code); Counter
    of rejected lines by reason). The first bad line of each reason is logged
    with its file:line.

  Raises:
    DataError: the file cannot be read, or has no usable entry.
  """
  from polyglot_jax.data import dictionaries
  entries, report = dictionaries.read_jsonl(path)
  groups = []
  for entry in entries:
    words = [(w.text, w.lang) for w in entry.words]
    if len({lang for _, lang in words}) < 2:
      report.reject("every word in one language (no translation)", entry.where)
      continue
    groups.append(words)
  for reason, n in report.rejected.most_common():
    logging.warning("code-switch dictionary: rejected %d lines (%s); first at %s", n, reason, report.examples[reason])
  if not groups:
    where = "; ".join(f"{n} {reason} (first at {report.examples[reason]})"
                      for reason, n in report.rejected.most_common())
    raise DataError(f"code-switch dictionary '{path}' has no usable entry ({where or 'the file is empty'}); point "
                    "config.data.code_switch.dictionary at word_pairs or word_groups JSONL")
  return groups, Counter(report.rejected)


@dataclasses.dataclass
class SwitchTable:
  """Per document language: word span (int64 bytes) → translations [(language, token ids)]."""
  spans: dict[str, dict[bytes, list[tuple[str, np.ndarray]]]]
  lengths: dict[str, tuple[int, ...]]  # Span lengths present per language, longest first.
  word_start: np.ndarray  # [vocab] bool: the piece begins with "▁".
  entries: int  # (word, translation) pairs in the table.
  unusable: int  # Dictionary words whose tokens do not begin with a word-start piece (never matched).


def word_starts(processor) -> np.ndarray:
  """[vocab] bool: which pieces begin a word (start with "▁")."""
  pieces = processor.id_to_piece(list(range(processor.get_piece_size())))
  return np.asarray([p.startswith(WORD_START) and not processor.is_control(i) for i, p in enumerate(pieces)])


def build_table(groups: Sequence[Sequence[tuple[str, str]]], processor,
                target_languages: Iterable[str] = ()) -> SwitchTable:
  """The switch table of dictionary groups, every direction within a group.

  Args:
    groups: lists of (word, language code); each word translates every other
      word of its group that is in another language.
    processor: the SentencePiece model the data is tokenized with.
    target_languages: languages translations may be in (empty: any).

  Returns:
    A ``SwitchTable``; a translation identical to its word (same tokens) is left out.
  """
  targets = set(target_languages)
  words = sorted({w for group in groups for w in group})
  encoded = processor.encode([text for text, _ in words]) if words else []
  ids = {w: np.asarray(t, np.int64) for w, t in zip(words, encoded)}
  start = word_starts(processor)
  spans: dict[str, dict[bytes, dict[tuple[str, bytes], np.ndarray]]] = {}
  unusable = set()
  for group in groups:
    for src in group:
      source = ids[src]
      if not len(source) or not start[source[0]]:
        unusable.add(src)
        continue
      for tgt in group:
        translation = ids[tgt]
        if tgt[1] == src[1] or (targets and tgt[1] not in targets) or not len(translation):
          continue
        if np.array_equal(translation, source):
          continue
        options = spans.setdefault(src[1], {}).setdefault(source.tobytes(), {})
        options.setdefault((tgt[1], translation.tobytes()), translation)
  table = {lang: {key: [(tl, t) for (tl, _), t in options.items()] for key, options in by_span.items()}
           for lang, by_span in spans.items()}
  lengths = {lang: tuple(sorted({len(key) // 8 for key in by_span}, reverse=True)) for lang, by_span in table.items()}
  entries = sum(len(options) for by_span in table.values() for options in by_span.values())
  return SwitchTable(table, lengths, start, entries, len(unusable))


# ---------------------------------------------------------------------------
# Switching one document
# ---------------------------------------------------------------------------


class CodeSwitcher:
  """Switches the words of one document at a time; a pure function of (seed, document identity).

  Args:
    table: the ``SwitchTable``.
    rate: probability that a dictionary word is switched.
    seed: seed of every draw (``config.data.code_switch.seed``).
    languages: lang id → language code (``Data.languages``).
    source: the dictionary file (named in the fingerprint).
  """

  def __init__(self, table: SwitchTable, rate: float, seed: int, languages: Sequence[str], source: str = ""):
    self.table, self.rate, self.seed = table, float(rate), int(seed)
    self.languages = tuple(languages)
    self.source = source

  def fingerprint(self) -> dict:
    """What a checkpoint's stream state depends on (offsets index switched documents)."""
    return {"rate": self.rate, "seed": self.seed, "dictionary": self.source, "entries": self.table.entries}

  def switch(self, tokens, lang_id: int, identity: Sequence[int]) -> SwitchedDocument | None:
    """The document with its dictionary words switched, or None when nothing was switched.

    Args:
      tokens: the document's token ids (no bos/eos).
      lang_id: its language id.
      identity: non-negative ints naming the document (e.g. ``(STREAMED, host,
        position)``); the draws are a pure function of it and the seed.

    Returns:
      A ``SwitchedDocument`` or None (no switch: the document is unchanged).
    """
    lang = self.languages[lang_id] if 0 <= lang_id < len(self.languages) else None
    spans = self.table.spans.get(lang)
    if not spans or self.rate <= 0:
      return None
    toks = np.asarray(tokens, np.int64)
    n = len(toks)
    if not n:
      return None
    starts = np.flatnonzero(self.table.word_start[toks])
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, *map(int, identity)]))
    # One draw per word start, then a dictionary look-up only where it came up: the
    # same law as drawing for each dictionary word, at a rate-th of the look-ups.
    chosen = starts[rng.random(len(starts)) < self.rate]
    found, end = [], 0
    for s in chosen:
      if s < end:
        continue
      for length in self.table.lengths[lang]:
        stop = s + length
        if stop > n or (stop < n and not self.table.word_start[toks[stop]]):
          continue
        options = spans.get(toks[s:stop].tobytes())
        if options is not None:
          found.append((int(s), int(stop), options[int(rng.integers(len(options)))]))
          end = stop
          break
    if not found:
      return None
    return _splice(toks, found, lang)


def _splice(toks: np.ndarray, found: list, lang: str) -> SwitchedDocument:
  """Replaces each (start, stop, (language, translation)) span; labels as the module docstring says."""
  parts, targets, weights, switches = [], [], [], []
  prev, at = 0, 0
  for s, stop, (target_lang, translation) in found:
    kept = toks[prev:s]
    parts += [kept, translation]
    at += len(kept)
    span_targets = translation.copy()
    span_targets[0] = toks[s]  # The position before the span predicts the original first token ...
    span_weights = np.zeros(len(translation), np.int64)
    span_weights[0] = 1  # ... and the rest of the span (foreign targets) is ignored.
    targets += [kept, span_targets]
    weights += [np.ones(len(kept), np.int64), span_weights]
    switches.append(Switch(at, lang, target_lang))
    at += len(translation)
    prev = stop
  parts.append(toks[prev:])
  targets.append(toks[prev:])
  weights.append(np.ones(len(toks) - prev, np.int64))
  return SwitchedDocument(np.concatenate(parts), np.concatenate(targets), np.concatenate(weights), switches)


# ---------------------------------------------------------------------------
# Config and counts
# ---------------------------------------------------------------------------


def from_config(config: ConfigDict, processor, languages: Sequence[str]) -> CodeSwitcher | None:
  """The code switcher of ``config.data.code_switch``, or None when it is off.

  Args:
    config: the run's config.
    processor: the SentencePiece model of the data.
    languages: lang id → language code.

  Raises:
    ConfigError: a bad rate, rate > 0 without a dictionary file, or an unknown
      target language (each names its key).
    DataError: a dictionary with no usable entry (named with its bad lines).
  """
  cs = config.data.code_switch
  if not 0.0 <= cs.rate <= 1.0:
    raise ConfigError(f"config.data.code_switch.rate={cs.rate}; use a probability in [0, 1] (0 turns it off)")
  if cs.rate == 0:
    return None
  if config.data.kind != "text":
    logging.warning("config.data.code_switch.rate=%s applies to text records; this stream of kind '%s' is read "
                    "without code-switching", cs.rate, config.data.kind)
    return None
  if not cs.dictionary or not os.path.isfile(cs.dictionary):
    raise ConfigError(f"config.data.code_switch.rate={cs.rate} needs config.data.code_switch.dictionary, a word_pairs "
                      f"or word_groups JSONL file (got '{cs.dictionary}'); set it, or set the rate to 0")
  try:
    targets = tuple(langs.resolve(code) for code in cs.target_languages)
  except langs.UnknownLanguageError as e:
    raise ConfigError(f"config.data.code_switch.target_languages: {e}") from None
  groups, rejected = read_dictionary(cs.dictionary)
  table = build_table(groups, processor, targets)
  if not table.entries:
    raise DataError(f"code-switch dictionary '{cs.dictionary}' gives no translation "
                    f"{'into ' + str(list(targets)) + ' ' if targets else ''}(every word's translations are in its "
                    "own language or tokenize alike); check the file or config.data.code_switch.target_languages")
  if table.unusable:
    logging.warning("code-switch dictionary %s: %d words do not begin with a word-start piece and are never "
                    "matched", cs.dictionary, table.unusable)
  logging.info("code-switching at rate %s: %d (word, translation) entries from %d groups of %s (%d lines rejected); "
               "languages with words to switch: %s", cs.rate, table.entries, len(groups), cs.dictionary,
               sum(rejected.values()), sorted(table.spans))
  return CodeSwitcher(table, cs.rate, cs.seed, languages, cs.dictionary)


def count(switches: Iterable[Switch]) -> Counter:
  """Switches per (document language, translation language)."""
  return Counter((s.source, s.target) for s in switches)


def counts_to_json(counts: Counter) -> dict[str, int]:
  return {f"{src}>{tgt}": int(n) for (src, tgt), n in sorted(counts.items())}


def counts_from_json(value: dict) -> Counter:
  return Counter({tuple(key.split(">", 1)): int(n) for key, n in value.items()})


def summary(counts: Counter) -> str:
  """One line: total, per document language and per translation language."""
  by_source, by_target = Counter(), Counter()
  for (src, tgt), n in counts.items():
    by_source[src] += n
    by_target[tgt] += n
  return (f"{sum(counts.values())} switches; by document language {dict(sorted(by_source.items()))}; "
          f"by translation language {dict(sorted(by_target.items()))}")
