"""How fairly a tokenizer treats each language, measured on parallel text.

Per language, over the sentences present in every language of the input:

- fertility: tokens per whitespace-delimited word (for scripts written
  without spaces — Han, Japanese, Thai, ... — a "word" is a whole
  space-free run, so compare those languages by parity instead);
- parity: the language's token count over the reference language's for the
  same sentences (Petrov et al. 2023); 1.0 is parity, 2.0 means twice the
  tokens — twice the cost and half the context for the same content;
- bytes per token: UTF-8 bytes over tokens (compression).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Callable, Iterable, Sequence
from polyglot_jax.errors import ReportError  # noqa: F401  (re-exported)




def parallel_sentences(records: Iterable[dict]) -> dict[str, dict[str, str]]:
  """{"id", "lang", "text"} records → id → lang → text, keeping ids present in every language."""
  by_id: dict[str, dict[str, str]] = defaultdict(dict)
  languages = set()
  for r in records:
    by_id[str(r["id"])][r["lang"]] = r["text"]
    languages.add(r["lang"])
  return {i: texts for i, texts in by_id.items() if set(texts) == languages}


def tokenizer_report(encode: Callable[[str], Sequence], parallel: dict[str, dict[str, str]],
                     reference: str = "eng") -> dict[str, dict[str, float]]:
  """Fertility, parity and bytes per token per language.

  Args:
    encode: text → tokens (any sequence).
    parallel: id → language → text, the same ids in every language.
    reference: language parity is measured against.
  """
  if not parallel:
    raise ReportError("no sentence is present in every language; the report needs parallel text with shared ids")
  languages = sorted(next(iter(parallel.values())))
  if reference not in languages:
    raise ReportError(f"reference language '{reference}' is not in the parallel text (languages: {languages})")
  tokens = {lang: 0 for lang in languages}
  words = {lang: 0 for lang in languages}
  nbytes = {lang: 0 for lang in languages}
  for texts in parallel.values():
    for lang in languages:
      text = texts[lang]
      tokens[lang] += len(encode(text))
      words[lang] += len(text.split())
      nbytes[lang] += len(text.encode("utf-8"))
  out = {}
  for lang in languages:
    out[lang] = {
        "sentences": len(parallel),
        "tokens": tokens[lang],
        "words": words[lang],
        "bytes": nbytes[lang],
        "fertility": tokens[lang] / max(words[lang], 1),
        "parity": tokens[lang] / max(tokens[reference], 1),
        "bytes_per_token": nbytes[lang] / max(tokens[lang], 1),
    }
  return out


def format_report(report: dict[str, dict[str, float]]) -> str:
  lines = [f"{'lang':<6} {'tokens':>9} {'fertility':>10} {'parity':>8} {'bytes/token':>12}"]
  for lang, r in sorted(report.items(), key=lambda kv: kv[1]["parity"]):
    lines.append(f"{lang:<6} {r['tokens']:>9,} {r['fertility']:>10.2f} {r['parity']:>8.2f} {r['bytes_per_token']:>12.2f}")
  return "\n".join(lines)


def write_chart(report: dict[str, dict[str, float]], path: str, title: str = "") -> None:
  """A PNG bar chart of parity per language (sorted), with the parity line at 1."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  items = sorted(report.items(), key=lambda kv: kv[1]["parity"])
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(items)), 3.5))
  ax.bar([k for k, _ in items], [v["parity"] for _, v in items], color="#4c72b0")
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.set_ylabel("tokens relative to reference")
  ax.set_title(title or "tokenizer parity")
  ax.tick_params(axis="x", rotation=60)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_report(report, path: str) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
