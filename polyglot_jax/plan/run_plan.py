"""The run plan: total tokens, steps, tokens and epochs per language, and wall-clock days.

Language sizes come from the shipped table of mC4 token counts
(mc4_tokens.tsv, from the mT5 paper), so a plan needs no data files. The
mixture is the one training would use (config.data.mixture through
data/mixing.py), with the run's total tokens as the UniMax budget; days are
steps × the compiler's estimated step time, so they inherit that estimate's
caveats (aot.py).
"""

from __future__ import annotations

import functools
from importlib import resources

from ml_collections import ConfigDict

from polyglot_jax.errors import PlanError

SECONDS_PER_DAY = 86400.0


@functools.lru_cache(maxsize=1)
def mc4_token_counts() -> dict[str, float]:
  """ISO 639-3 code → approximate mC4 tokens (mT5 SentencePiece tokens)."""
  text = resources.files("polyglot_jax.plan").joinpath("mc4_tokens.tsv").read_text(encoding="utf-8")
  out = {}
  for line in text.splitlines():
    if not line.strip() or line.startswith("#") or line.startswith("code\t"):
      continue
    code, _, billions = line.split("\t")
    out[code] = float(billions) * 1e9
  return out


def language_sizes(config: ConfigDict) -> tuple[dict[str, float], str]:
  """Tokens per configured language from the mC4 table, and a note on where the list came from."""
  from polyglot_jax.data.languages import resolve
  table = mc4_token_counts()
  if not config.data.languages:
    return dict(table), f"config.data.languages is empty: planning over the {len(table)} mC4 languages"
  codes = [resolve(code) for code in config.data.languages]
  missing = [c for c in codes if c not in table]
  if missing:
    raise PlanError(f"config.data.languages has {missing}, which mC4 (plan/mc4_tokens.tsv) does not cover; "
                    "the run plan needs a size for every language")
  return {c: table[c] for c in codes}, f"{len(codes)} languages from config.data.languages"


def run_plan(config: ConfigDict, step_seconds: float | None) -> dict:
  """Tokens and epochs per language, total steps and days for config's run.

  Args:
    config: the run's config (train length, batch, mixture, languages).
    step_seconds: estimated seconds per step (StepPlan.step_seconds), or None.

  Returns:
    {"steps", "tokens_per_step", "total_tokens", "method", "max_epochs", "languages": [{"lang",
    "corpus_tokens", "rate", "tokens", "epochs"}], "days", "notes"}.
  """
  from polyglot_jax import configs as config_lib
  from polyglot_jax.data.mixing import rates_from_config
  d = config.data
  steps = config_lib.resolve_steps(config)
  tokens_per_step = d.global_batch_size * d.seq_len
  total = steps * tokens_per_step
  sizes, source = language_sizes(config)
  rates = rates_from_config(d.mixture, sizes, total)
  rows = []
  for lang in sorted(sizes, key=lambda code: -sizes[code]):
    tokens = rates[lang] * total
    rows.append({"lang": lang, "corpus_tokens": sizes[lang], "rate": rates[lang], "tokens": tokens,
                 "epochs": tokens / sizes[lang] if sizes[lang] else 0.0})
  notes = [source]
  method = d.mixture.method
  if method == "unimax":
    capped = sum(1 for r in rows if r["epochs"] >= d.mixture.max_epochs * (1 - 1e-9))
    notes.append(f"UniMax: {capped} of {len(rows)} languages reach max_epochs={d.mixture.max_epochs:g}; "
                 "the rest share the remaining budget uniformly")
    if any(r["epochs"] > d.mixture.max_epochs * (1 + 1e-9) for r in rows):
      notes.append("the run needs more tokens than max_epochs of every language allows; every language "
                   "repeats more often than max_epochs")
  return {"steps": steps, "tokens_per_step": tokens_per_step, "total_tokens": total, "method": method,
          "max_epochs": d.mixture.max_epochs if method == "unimax" else None, "languages": rows,
          "step_seconds": step_seconds,
          "days": steps * step_seconds / SECONDS_PER_DAY if step_seconds else None, "notes": notes}
