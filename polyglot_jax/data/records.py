"""Record kinds: what a line of a data file holds, how it is checked, and the rows it becomes.

``config.data.kind`` names one kind; every record of the data files must be
of that kind. Each kind has a validator (a reason for every rejected record,
counted and reported with its first file:line) and turns the records of one
language into rows whose fields are ``kind.fields(seq_len)``. An objective's
batch spec must be a subset of them (``check_batch_spec``).

Kinds and their JSONL records:
- ``text``: ``{"text", "lang"}``.
- ``instruction``: ``{"instruction", "input" (optional), "output", "lang"}``;
  rendered with ``config.data.template``; loss only on the output.
- ``chat``: ``{"messages": [{"role", "content"}, ...], "lang"}``; loss only on
  assistant turns.
- ``preference``: ``{"prompt", "chosen", "rejected", "lang"}`` plus optional
  precomputed reference log-probs ``ref_logp_chosen`` / ``ref_logp_rejected``;
  a pair stays together in one row (chosen_* and rejected_* fields), prompt
  masked. ``scored_preference``: the same, with the two log-probs required
  (what DPO reads with a precomputed reference).
- ``word_pairs``: ``{"src_text", "tgt_text", "src_lang", "tgt_lang"}`` and
  ``word_groups``: ``{"words": [{"text", "lang"}, ...]}`` (dictionaries);
  each word is its own segment, a pair or group stays in one row, and
  ``word_ids`` / ``word_groups`` say which word each token belongs to and
  which group each word is in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections import Counter
from typing import Any, ClassVar, Sequence

import numpy as np

from polyglot_jax.data import languages as langs
from polyglot_jax.data.rows import empty_row, pack_documents, write_piece
from polyglot_jax.errors import ConfigError, DataError
from polyglot_jax.objectives.base import TEXT_FIELDS, FieldSpec

KINDS: dict[str, "RecordKind"] = {}


@dataclasses.dataclass
class RowOptions:
  """What row making needs beyond the records: config.data.packing / template, language code → id.

  ``code_switch`` (a ``codeswitch.CodeSwitcher``, text records only) switches
  dictionary words before packing; its switches are added up in ``switch_counts``.
  """
  packing: str
  template: str
  language_ids: dict
  code_switch: Any = None
  switch_counts: Counter = dataclasses.field(default_factory=Counter)

# Instruction templates: (prompt with {instruction} and {input}, prompt without input).
TEMPLATES = {
    "alpaca": ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
               "Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    "plain": ("{instruction}\n{input}\n", "{instruction}\n"),
}
CHAT_ROLES = ("system", "user", "assistant")


class Rejected(str):
  """A parser's verdict on a bad record: the reason, counted and reported with its file:line."""


def register_kind(kind: "RecordKind") -> "RecordKind":
  """Adds a record kind to the registry (``config.data.kind`` names it)."""
  KINDS[kind.name] = kind
  return kind


def get_kind(name: str) -> "RecordKind":
  if name not in KINDS:
    raise ConfigError(f"config.data.kind='{name}' is unknown; record kinds: {sorted(KINDS)}")
  return KINDS[name]


def check_batch_spec(objective_name: str, spec: dict[str, FieldSpec], kind_name: str, seq_len: int) -> None:
  """Raises a ConfigError naming a batch field of the objective that the record kind cannot give."""
  kind = get_kind(kind_name)
  gives = kind.fields(seq_len)
  for name, field in spec.items():
    if name not in gives:
      raise ConfigError(f"objective '{objective_name}' needs batch field '{name}' that record kind "
                        f"'{kind_name}' (config.data.kind) does not give; it gives {sorted(gives)}")
    if tuple(gives[name].shape) != tuple(field.shape):
      raise ConfigError(f"objective '{objective_name}' wants batch field '{name}' of shape {tuple(field.shape)} "
                        f"per row; record kind '{kind_name}' gives {tuple(gives[name].shape)}")


@dataclasses.dataclass
class RecordKind:
  """Base: a kind is a name, the record keys it needs, a parser and a row maker."""
  name: str
  keys: tuple[str, ...]  # Keys every record has (for messages naming the expected fields).

  def fields(self, seq_len: int) -> dict[str, FieldSpec]:
    return {k: FieldSpec((seq_len,)) for k in TEXT_FIELDS}

  def parse(self, record: dict) -> Any:
    """Kind-specific content of a record, or ``Rejected(reason)``."""
    raise NotImplementedError

  # True when a record is one document of tokens (+ per-token loss weights) that packs like text:
  # such kinds also stream (grain, seqio) through ``encode``.
  packable: ClassVar[bool] = False

  def language(self, record: dict) -> Any:
    return record.get("lang")

  def content_languages(self, content) -> set:
    """Languages inside a record besides its own (each word's, for dictionaries): they need language ids too."""
    del content
    return set()

  def encode(self, content, processor, template: str) -> tuple[list[int], list[int] | None]:
    """A packable record's (token ids, per-token loss weights or None for all 1)."""
    raise NotImplementedError(f"record kind '{self.name}' is not packable")

  def rows(self, contents: list, processor, lang_id: int, seq_len: int, options) -> dict[str, np.ndarray]:
    """Rows of one language's contents; packable kinds pack their encoded documents."""
    docs = []
    for content in contents:
      tokens, weights = self.encode(content, processor, options.template)
      docs.append((tokens, lang_id) if weights is None else (tokens, lang_id, weights))
    return pack_documents(docs, seq_len, processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0),
                          options.packing)


def _text(record: dict, key: str):
  value = record.get(key)
  return value if isinstance(value, str) and value else None


class TextKind(RecordKind):

  def parse(self, record):
    if "text" not in record or "lang" not in record:
      return Rejected("missing 'text' or 'lang' field")
    text = _text(record, "text")
    return text if text is not None else Rejected("empty or non-string text")

  packable = True

  def encode(self, content, processor, template):
    return processor.encode(content), None

  def rows(self, contents, processor, lang_id, seq_len, options):
    ids = processor.encode(list(contents)) if contents else []  # One batched call: fast on large corpora.
    docs = [(t, lang_id) for t in ids]
    if options.code_switch is not None:
      from polyglot_jax.data import codeswitch
      for i, tokens in enumerate(ids):  # A document is named by its index among this language's records.
        switched = options.code_switch.switch(tokens, lang_id, (codeswitch.PACKED, lang_id, i))
        if switched is not None:
          docs[i] = switched.as_doc(lang_id)
          options.switch_counts.update(codeswitch.count(switched.switches))
    return pack_documents(docs, seq_len, processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0),
                          options.packing)


def _prompt_response(processor, prompt: str, response: str):
  p, r = processor.encode(prompt), processor.encode(response)
  return p + r, [0] * len(p) + [1] * len(r)


class InstructionKind(RecordKind):

  def parse(self, record):
    instruction, output = _text(record, "instruction"), _text(record, "output")
    extra = record.get("input", "")
    if instruction is None or output is None or not isinstance(extra, str):
      return Rejected("missing, empty or non-string 'instruction' / 'output' (or a non-string 'input')")
    return instruction, extra, output

  def render(self, content, template: str) -> tuple[str, str]:
    instruction, extra, output = content
    with_input, without = TEMPLATES[template]
    prompt = (with_input if extra else without).format(instruction=instruction, input=extra)
    return prompt, output

  packable = True

  def encode(self, content, processor, template):
    if template not in TEMPLATES:
      raise ConfigError(f"config.data.template='{template}'; templates: {sorted(TEMPLATES)}")
    return _prompt_response(processor, *self.render(content, template))


class ChatKind(RecordKind):

  def parse(self, record):
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
      return Rejected("missing or empty 'messages' list")
    out = []
    for m in messages:
      if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
        return Rejected(f"a message that is not {{\"role\": one of {list(CHAT_ROLES)}, \"content\": string}}")
      out.append((m["role"], m["content"]))
    if not any(role == "assistant" for role, _ in out):
      return Rejected("no assistant message (nothing to learn from)")
    return out

  packable = True

  def encode(self, content, processor, template):
    del template  # Turns are marked by role lines.
    tokens, weights = [], []
    for role, text in content:
      head = processor.encode(f"<{role}>\n")
      body = processor.encode(text + "\n")
      tokens += head + body
      weights += [0] * len(head) + [1 if role == "assistant" else 0] * len(body)
    return tokens, weights


# Where a generated chat turn ends: the next role line (a model tuned on the chat kind writes one).
CHAT_STOPS = tuple(f"\n<{role}>" for role in CHAT_ROLES)


def generation_prompt(record: dict, processor, template: str = "alpaca") -> tuple[list[int], str] | Rejected:
  """Prompt token ids (no BOS) for generating the response of one record, tokenised as training does.

  The record is one of: ``{"prompt"}`` (the text as it is); an instruction
  record ``{"instruction", "input" (optional)}`` rendered with ``template``
  (``TEMPLATES``), the response to come; a chat record ``{"messages"}`` whose
  turns are written as the chat kind writes them, then the ``<assistant>``
  role line. Training records (with "output" or a final assistant turn) work
  too: the output and turns after the last user turn are left out.

  Args:
    record: one JSON object.
    processor: a SentencePieceProcessor.
    template: an instruction template name.

  Returns:
    (prompt ids, kind name: "prompt" | "instruction" | "chat"), or a ``Rejected`` reason.
  """
  if isinstance(record.get("prompt"), str):
    return processor.encode(record["prompt"]), "prompt"
  if "instruction" in record:
    if template not in TEMPLATES:
      raise ConfigError(f"--template '{template}' is unknown; templates: {sorted(TEMPLATES)}")
    content = InstructionKind.parse(None, dict(record, output=record.get("output") or "-"))
    if isinstance(content, Rejected):
      return content
    return processor.encode(InstructionKind.render(None, content, template)[0]), "instruction"
  if "messages" in record:
    messages = record["messages"]
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str) for m in messages)
    if not ok:
      return Rejected(f"'messages' is not a non-empty list of {{\"role\": one of {list(CHAT_ROLES)}, "
                      "\"content\": string}")
    while messages and messages[-1]["role"] == "assistant":
      messages = messages[:-1]
    ids = []
    for m in messages:
      ids += processor.encode(f"<{m['role']}>\n") + processor.encode(m["content"] + "\n")
    return ids + processor.encode("<assistant>\n"), "chat"
  return Rejected("needs a string 'prompt', an 'instruction' (with optional 'input') or a 'messages' list")


PREFERENCE_SIDES = ("chosen", "rejected")


class PreferenceKind(RecordKind):
  """One (prompt, chosen, rejected) pair per row group: chosen_* and rejected_* rows, padded."""

  def fields(self, seq_len):
    out = {f"{side}_{k}": FieldSpec((seq_len,)) for side in PREFERENCE_SIDES for k in TEXT_FIELDS}
    out.update(ref_logp_chosen=FieldSpec((), "float32"), ref_logp_rejected=FieldSpec((), "float32"),
               has_ref_logp=FieldSpec(()))
    return out

  def parse(self, record):
    prompt, chosen, rejected = (_text(record, k) for k in ("prompt", "chosen", "rejected"))
    if prompt is None or chosen is None or rejected is None:
      return Rejected("missing, empty or non-string 'prompt' / 'chosen' / 'rejected'")
    if chosen.strip() == rejected.strip():
      return Rejected("chosen == rejected (nothing to prefer)")
    refs = [record.get("ref_logp_chosen"), record.get("ref_logp_rejected")]
    if any(r is not None for r in refs) and not all(isinstance(r, (int, float)) for r in refs):
      return Rejected("'ref_logp_chosen' and 'ref_logp_rejected' must both be numbers when either is given")
    return prompt, chosen, rejected, refs if refs[0] is not None else None

  def rows(self, contents, processor, lang_id, seq_len, options):
    bos, eos, pad = processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0)
    out = {k: [] for k in self.fields(seq_len)}
    truncated = 0
    for prompt, chosen, rejected, refs in contents:
      for side, response in zip(PREFERENCE_SIDES, (chosen, rejected)):
        tokens, weights = _prompt_response(processor, prompt, response)
        seq = [bos] + tokens + [eos]
        w = weights + [1]
        if len(seq) - 1 > seq_len:
          truncated += 1
          seq, w = seq[:seq_len + 1], w[:seq_len]
        row = empty_row(seq_len, pad)
        write_piece(row, 0, 1, seq[:-1], seq[1:], w, lang_id)
        for k in TEXT_FIELDS:
          out[f"{side}_{k}"].append(row[k])
      out["ref_logp_chosen"].append(refs[0] if refs else 0.0)
      out["ref_logp_rejected"].append(refs[1] if refs else 0.0)
      out["has_ref_logp"].append(1 if refs else 0)
    if truncated:
      logging.warning("preference data: %d responses longer than data.seq_len=%d were cut at the end",
                      truncated, seq_len)
    specs = self.fields(seq_len)
    return {k: np.asarray(v, specs[k].dtype).reshape((len(contents),) + specs[k].shape) for k, v in out.items()}


class ScoredPreferenceKind(PreferenceKind):
  """Preference records that must carry precomputed reference log-probs.

  The DPO objective reads this kind in place of ``preference`` when
  ``config.dpo.reference = "precomputed"`` (its ``stream_configs``), so a
  record without ``ref_logp_chosen`` / ``ref_logp_rejected`` is rejected and
  counted with its file:line when the data is read, not found at train time.
  """

  def parse(self, record):
    content = super().parse(record)
    if not isinstance(content, Rejected) and content[3] is None:
      return Rejected("no 'ref_logp_chosen' / 'ref_logp_rejected' (config.dpo.reference=precomputed): add them "
                      "with `polyglot-jax score`, or set config.dpo.reference=policy")
    return content


def group_hash(words) -> int:
  """A word group's id in ``word_groups``: a 31-bit hash of its (text, language) pairs, stable across runs."""
  return zlib.crc32(json.dumps(sorted(words), ensure_ascii=False).encode()) & 0x7FFFFFFF


class WordsKind(RecordKind):
  """Dictionary words: each word a segment; a pair or group stays in one row.

  Extra fields: ``word_ids`` [L] (1-based index of the word a token belongs
  to within its row, 0 elsewhere; bos/eos of a word belong to it) and
  ``word_groups`` [L // 2] (the group of word i+1: a 31-bit hash of the
  group's words, so that every backend numbers a group alike and copies of
  one group drawn into a batch twice share their id; -1 for no word).
  """

  def fields(self, seq_len):
    out = super().fields(seq_len)
    out.update(word_ids=FieldSpec((seq_len,)), word_groups=FieldSpec((seq_len // 2,)))
    return out

  def parse(self, record):
    if self.name == "word_pairs":
      src, tgt = _text(record, "src_text"), _text(record, "tgt_text")
      if src is None or tgt is None:
        return Rejected("missing, empty or non-string 'src_text' / 'tgt_text'")
      words = [(src, record.get("src_lang")), (tgt, record.get("tgt_lang"))]
    else:
      raw = record.get("words")
      if not isinstance(raw, list) or len(raw) < 2:
        return Rejected("'words' must be a list of at least two {\"text\", \"lang\"} entries")
      words = [(w.get("text"), w.get("lang")) if isinstance(w, dict) else (None, None) for w in raw]
    out = []
    for text, lang in words:
      if not isinstance(text, str) or not text:
        return Rejected("a word with empty or non-string text")
      try:
        out.append((text, langs.resolve(lang)))
      except (langs.UnknownLanguageError, TypeError, AttributeError):
        return Rejected(f"unknown language {lang!r}")
    return out

  def content_languages(self, content):
    return {lang for _, lang in content}

  def language(self, record):
    if self.name == "word_pairs":
      return record.get("src_lang")
    words = record.get("words")
    return words[0].get("lang") if isinstance(words, list) and words and isinstance(words[0], dict) else None

  def rows(self, contents, processor, lang_id, seq_len, options):
    del lang_id  # Every word carries its own language.
    bos, eos, pad = processor.bos_id(), processor.eos_id(), max(processor.pad_id(), 0)
    ids = options.language_ids
    max_words = seq_len // 2
    rows, words_in, groups = [], [], []
    row, fill, n_words = None, seq_len, max_words
    for words in contents:
      unknown = [lang for _, lang in words if lang not in ids]
      if unknown:
        raise DataError(f"dictionary words in {unknown[0]!r}, which config.data.languages={sorted(ids)} does not "
                        "list; add it (every word's language needs a language id)")
      encoded = [(processor.encode(text), ids[lang]) for text, lang in words]
      need = sum(len(t) + 1 for t, _ in encoded)
      if need > seq_len or len(encoded) > max_words:
        continue
      if fill + need > seq_len or n_words + len(encoded) > max_words:
        row, fill, n_words = empty_row(seq_len, pad), 0, 0
        rows.append(row)
        words_in.append(np.zeros(seq_len, np.int32))
        groups.append(np.full(max_words, -1, np.int32))
      group = group_hash(words)
      for tokens, lang in encoded:
        seq = [bos] + list(tokens) + [eos]
        n_words += 1
        start = fill
        fill = write_piece(row, fill, n_words, seq[:-1], seq[1:], [1] * (len(seq) - 1), lang)
        words_in[-1][start:fill] = n_words
        groups[-1][n_words - 1] = group
    if not rows:
      return {k: np.zeros((0,) + f.shape, np.int32) for k, f in self.fields(seq_len).items()}
    out = {k: np.stack([r[k] for r in rows]) for k in TEXT_FIELDS}
    out.update(word_ids=np.stack(words_in), word_groups=np.stack(groups))
    return out


register_kind(TextKind("text", ("text", "lang")))
register_kind(InstructionKind("instruction", ("instruction", "output", "lang")))
register_kind(ChatKind("chat", ("messages", "lang")))
register_kind(PreferenceKind("preference", ("prompt", "chosen", "rejected", "lang")))
register_kind(ScoredPreferenceKind("scored_preference", ("prompt", "chosen", "rejected", "lang")))
register_kind(WordsKind("word_pairs", ("src_text", "tgt_text", "src_lang", "tgt_lang")))
register_kind(WordsKind("word_groups", ("words",)))


def _other_kind(record: dict, kind: RecordKind) -> RecordKind | None:
  """The registered kind whose keys this record has, when it lacks ``kind``'s."""
  if all(k in record for k in kind.keys):
    return None
  for other in KINDS.values():
    if other is not kind and all(k in record for k in other.keys):
      return other
  return None


def parse_raw(raw: bytes, kind_name: str, default_lang: str | None = None, where: str = ""):
  """(content, canonical language code) of one raw JSONL/ArrayRecord record, or the reason it is rejected.

  Args:
    raw: the record's bytes.
    kind_name: the record kind every record must be.
    default_lang: the language of a per-language file (records may omit theirs, not contradict it).
    where: "file:line", named when the record is of another kind.

  Raises:
    DataError: the record is of another registered kind.
  """
  kind = get_kind(kind_name)
  try:
    record = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    return "invalid UTF-8"
  except json.JSONDecodeError:
    return "malformed JSON"
  if not isinstance(record, dict):
    return "not a JSON object"
  other = _other_kind(record, kind)
  if other is not None:
    raise DataError(f"{where}: a '{other.name}' record where config.data.kind='{kind.name}' expects "
                    f"fields {list(kind.keys)}; set config.data.kind={other.name} or use other files")
  if default_lang and "lang" not in record and kind.name in ("text", "instruction", "chat", "preference"):
    record = dict(record, lang=default_lang)
  content = kind.parse(record)
  if isinstance(content, Rejected):
    return str(content)
  lang = kind.language(record)
  try:
    lang = langs.resolve(lang)
  except (langs.UnknownLanguageError, TypeError, AttributeError):
    return f"unknown language {lang!r}"
  if default_lang and lang != default_lang:
    return f"lang '{lang}' in a file of language '{default_lang}'"
  return content, lang


def read_records(paths: Sequence[str], kind_name: str):
  """Reads and validates records of one kind.

  Returns:
    (list of (content, canonical language code), Counter of rejection reasons).

  Raises:
    DataError: a file holds records of another kind (named with file:line and
      the fields this kind expects), or cannot be read.
  """
  from polyglot_jax.data.jsonl import iter_lines, log_rejected
  out, rejected, first_bad = [], Counter(), {}
  for path, lineno, raw in iter_lines(paths):
    parsed = parse_raw(raw, kind_name, None, f"{path}:{lineno}")
    if isinstance(parsed, str):
      rejected[parsed] += 1
      first_bad.setdefault(parsed, f"{path}:{lineno}")
      continue
    out.append(parsed)
  log_rejected(rejected, first_bad)
  return out, rejected
