"""Mixture rates against hand computations; the sampler against its rates (chi-square)."""

import numpy as np
import pytest
from scipy import stats

from polyglot_jax.data import mixing


def test_temperature_at_alpha_one_is_proportional():
  sizes = {"eng": 900.0, "deu": 90.0, "swa": 10.0}
  assert mixing.temperature(sizes, 1.0) == pytest.approx(mixing.proportional(sizes))
  assert mixing.proportional(sizes) == pytest.approx({"eng": 0.9, "deu": 0.09, "swa": 0.01})


def test_temperature_flattens():
  sizes = {"eng": 10000.0, "swa": 100.0}
  rates = mixing.temperature(sizes, 0.5)
  # 100 : 10 after the square root.
  assert rates == pytest.approx({"eng": 100 / 110, "swa": 10 / 110})
  assert mixing.temperature(sizes, 0.0) == pytest.approx({"eng": 0.5, "swa": 0.5})


def test_unimax_hand_computed():
  # Budget 600 over 3 languages, at most 2 epochs each, smallest first:
  # a: 600/3 = 200 > 2·10 → 20, 580 left; b: 580/2 = 290 > 2·100 → 200, 380 left; c: 380.
  budgets = mixing.unimax({"c": 1000, "a": 10, "b": 100}, budget=600, max_epochs=2)
  assert budgets == pytest.approx({"a": 20, "b": 200, "c": 380})


def test_unimax_uniform_when_nothing_is_capped_and_capped_everywhere():
  assert mixing.unimax({"a": 1000, "b": 2000}, budget=100, max_epochs=1) == pytest.approx({"a": 50, "b": 50})
  assert mixing.unimax({"a": 10, "b": 20}, budget=1000, max_epochs=3) == pytest.approx({"a": 30, "b": 60})


def test_weights_and_bad_mixtures():
  assert mixing.mixture_rates("weights", {"a": 5, "b": 5}, weights={"a": 3, "b": 1}) == pytest.approx(
      {"a": 0.75, "b": 0.25})
  assert mixing.mixture_rates("weights", {"a": 5, "b": 0}, weights={"a": 1, "b": 0})["b"] == 0
  with pytest.raises(mixing.MixtureError, match=r"\['xyz'\], which have no data"):
    mixing.mixture_rates("weights", {"a": 5}, weights={"a": 1, "xyz": 1})
  with pytest.raises(mixing.MixtureError, match=r"give \['b'\] a positive rate but they have no data"):
    mixing.mixture_rates("weights", {"a": 5, "b": 0}, weights={"a": 1, "b": 1})
  with pytest.raises(mixing.MixtureError, match="unknown mixture method 'zipf'"):
    mixing.mixture_rates("zipf", {"a": 1})


def test_sampler_matches_rates_chi_square():
  rates = mixing.temperature({"eng": 1e6, "deu": 2e5, "hin": 3e4, "swa": 1e3, "yor": 50.0}, 0.3)
  sampler = mixing.MixtureSampler(rates, seed=7)
  n = 50_000
  counts = np.bincount([sampler.next_index() for _ in range(n)], minlength=len(rates))
  expected = np.asarray([rates[lang] for lang in sampler.languages]) * n
  _, p_value = stats.chisquare(counts, expected)
  assert p_value > 1e-3, (counts, expected)
  # And a wrong rate vector is rejected by the same test.
  _, p_wrong = stats.chisquare(counts, np.full(len(rates), n / len(rates)))
  assert p_wrong < 1e-6


def test_sampler_resumes_exactly():
  rates = {"a": 0.2, "b": 0.5, "c": 0.3}
  straight = mixing.MixtureSampler(rates, seed=1)
  expected = [straight.next_index() for _ in range(10_000)]
  first = mixing.MixtureSampler(rates, seed=1)
  head = [first.next_index() for _ in range(5_123)]
  resumed = mixing.MixtureSampler(rates, seed=1)
  resumed.set_state(first.get_state())
  assert head + [resumed.next_index() for _ in range(10_000 - 5_123)] == expected


def test_mixture_report_uses_the_configured_rates(make_config, tmp_path):
  from polyglot_jax.data.commands import format_mixture, mixture_report
  config = make_config(data__mixture__method="temperature", data__mixture__alpha=0.5)
  rows = mixture_report(config, str(tmp_path))
  assert len(rows) == 13
  sizes = {r["lang"]: r["tokens"] for r in rows}
  expected = mixing.temperature(sizes, 0.5)
  for r in rows:
    assert r["rate"] == pytest.approx(expected[r["lang"]])
    run_tokens = 8 * 8 * 64
    assert r["expected_tokens"] == pytest.approx(r["rate"] * run_tokens)
    assert r["epochs"] == pytest.approx(r["expected_tokens"] / r["tokens"])
  table = format_mixture(rows, "temperature")
  assert table.splitlines()[2].startswith("ara")


def test_weights_naming_an_unknown_language_is_an_error(make_config, tmp_path):
  from polyglot_jax.data.commands import mixture_report
  from polyglot_jax.errors import DataError
  config = make_config(data__mixture__method="weights", data__mixture__weights=(("eng", 1.0), ("swa", 1.0)))
  with pytest.raises(DataError, match=r"config.data.mixture: mixture weights name \['swa'\], which have no data"):
    mixture_report(config, str(tmp_path))
