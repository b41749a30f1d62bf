"""``polyglot-jax data clean``: stream JSONL, filter, dedup, mask PII, report.

Writes ``kept.jsonl`` (cleaned documents), ``rejected.jsonl`` (each
document with its reason and source line) and ``report.json`` (per language
per filter), and prints the table. Every input line ends in exactly one of
kept or rejected: input = kept + rejected, checked at the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from typing import Sequence

from ml_collections import ConfigDict

from polyglot_jax.data import languages as langs
from polyglot_jax.data.clean import dedup, filters, script
from polyglot_jax.data.jsonl import DataError, iter_lines

THRESHOLD_KEYS = ("min_words", "max_char_repetition", "max_word_repetition", "max_special_ratio",
                  "lid_threshold", "near_dup_threshold")


def thresholds(clean: ConfigDict) -> tuple[dict, dict[str, dict]]:
  """Defaults and per-language overrides (codes resolved, keys checked)."""
  base = {k: clean[k] for k in THRESHOLD_KEYS}
  per_lang: dict[str, dict] = defaultdict(dict)
  for item in clean.per_language:
    lang, key, value = item
    if key not in THRESHOLD_KEYS:
      raise DataError(f"config.clean.per_language: unknown threshold '{key}'; use one of {THRESHOLD_KEYS}")
    per_lang[langs.resolve(lang)][key] = float(value)
  return base, per_lang


class LanguageIdentifier:
  """langid.py (its model ships inside the PyPI package); labels resolved through the registry."""

  def __init__(self):
    from langid.langid import LanguageIdentifier as _Identifier, model
    self._ident = _Identifier.from_modelstring(model, norm_probs=True)
    self.supported = set()
    for code in self._ident.nb_classes:
      try:
        self.supported.add(langs.resolve(code))
      except langs.UnknownLanguageError:
        pass

  def classify(self, text: str) -> tuple[str, float]:
    label, prob = self._ident.classify(text)
    try:
      return langs.resolve(label), float(prob)
    except langs.UnknownLanguageError:
      return label, float(prob)


def clean(paths: Sequence[str], out_dir: str, cfg: ConfigDict, use_lid: bool = True, progress: bool = True) -> dict:
  """Cleans JSONL {"text", "lang"} files into ``out_dir``; returns the report."""
  base, per_lang = thresholds(cfg)
  lid = LanguageIdentifier() if use_lid else None
  os.makedirs(out_dir, exist_ok=True)
  counts: dict[str, Counter] = defaultdict(Counter)
  pii: dict[str, Counter] = defaultdict(Counter)
  seen_exact: dict[str, set] = defaultdict(set)
  near: dict[str, dedup.MinHashIndex] = {}
  lines = iter_lines(paths)
  if progress:
    from tqdm import tqdm
    lines = tqdm(lines, desc="clean", unit="doc", file=sys.stderr, mininterval=1.0)
  with open(os.path.join(out_dir, "kept.jsonl"), "w", encoding="utf-8") as kept_f, \
       open(os.path.join(out_dir, "rejected.jsonl"), "w", encoding="utf-8") as rej_f:
    for path, lineno, raw in lines:
      lang, text, reason = _parse(raw)
      key = lang or "?"
      counts[key]["input"] += 1
      if reason is None:
        t = dict(base, **per_lang.get(lang, {}))
        reason = _check(text, lang, t, lid)
        if reason is None and cfg.mask_pii:
          text, masked = filters.mask_pii(text)
          pii[lang].update(masked)
        if reason is None:
          digest = dedup.exact_key(text)
          if digest in seen_exact[lang]:
            reason = "exact_duplicate"
          else:
            seen_exact[lang].add(digest)
            index = near.setdefault(lang, dedup.MinHashIndex(threshold=t["near_dup_threshold"]))
            similarity = index.add(text)
            if similarity >= t["near_dup_threshold"]:
              reason = f"near_duplicate (Jaccard≈{similarity:.2f})"
      if reason is None:
        counts[key]["kept"] += 1
        kept_f.write(json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n")
      else:
        counts[key]["rejected"] += 1
        counts[key][reason.split(" ")[0].split(":")[0]] += 1
        rej_f.write(json.dumps({"source": f"{path}:{lineno}", "reason": reason,
                                "record": raw.decode("utf-8", "replace").rstrip("\n")}, ensure_ascii=False) + "\n")
  report = {lang: dict(c) for lang, c in sorted(counts.items())}
  for lang, c in pii.items():
    report[lang]["pii_masked"] = dict(c)
  for lang, c in report.items():
    if c.get("input", 0) != c.get("kept", 0) + c.get("rejected", 0):
      raise RuntimeError(f"cleaning lost documents of '{lang}': {c}")
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2, ensure_ascii=False)
  return report


def _parse(raw: bytes) -> tuple[str | None, str, str | None]:
  try:
    record = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    return None, "", "invalid_utf8"
  except json.JSONDecodeError:
    return None, "", "malformed_json"
  if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "lang" not in record:
    return None, "", "missing_text_or_lang"
  try:
    return langs.resolve(str(record["lang"])), record["text"], None
  except langs.UnknownLanguageError:
    return None, record["text"], "unknown_language"


def _check(text: str, lang: str, t: dict, lid: LanguageIdentifier | None) -> str | None:
  registry_script = langs.get(lang).script
  if filters.word_count(text, registry_script) < t["min_words"]:
    return "too_few_words"
  if filters.special_char_ratio(text) > t["max_special_ratio"]:
    return "special_characters"
  if filters.char_repetition(text) > t["max_char_repetition"]:
    return "char_repetition"
  if filters.word_repetition(text) > t["max_word_repetition"]:
    return "word_repetition"
  ok, found = script.matches(text, registry_script)
  if not ok:
    return f"script_mismatch: {found or 'no letters'} for {lang} ({registry_script})"
  if lid is not None and lang in lid.supported:
    predicted, prob = lid.classify(text)
    if predicted != lang:
      return f"lid_mismatch: {predicted} ({prob:.2f})"
    if prob < t["lid_threshold"]:
      return f"lid_low_confidence: {prob:.2f}"
  return None


def format_report(report: dict) -> str:
  reasons = sorted({k for c in report.values() for k in c if k not in ("input", "kept", "rejected", "pii_masked")})
  header = f"{'lang':<6} {'input':>8} {'kept':>8} " + " ".join(f"{r[:18]:>18}" for r in reasons) + f" {'pii masked':>10}"
  lines = [header]
  for lang, c in report.items():
    masked = sum(c.get("pii_masked", {}).values())
    lines.append(f"{lang:<6} {c.get('input', 0):>8} {c.get('kept', 0):>8} "
                 + " ".join(f"{c.get(r, 0):>18}" for r in reasons) + f" {masked:>10}")
  return "\n".join(lines)
