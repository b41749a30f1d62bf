"""Interpretability: the logit lens on translation prompts and LAPE language-specific neurons.

``logit_lens`` reads every layer's residual stream through the final norm and
unembedding (Wendler et al. 2024); ``lape`` finds neurons that fire for one
language (Tang et al. 2024) and switches them off in a copy of the model
(``deactivate``). ``polyglot-jax analyze`` runs both (``commands``); see
docs/analysis.md.
"""

from polyglot_jax.analysis.lape import (activation_counts, activation_probabilities, deactivate, deactivation_table,
                                        layer_widths, neuron_mask, perplexity, select_neurons)
from polyglot_jax.analysis.logit_lens import layer_distributions, lens, translation_items, word_token_sets

__all__ = ["activation_counts", "activation_probabilities", "deactivate", "deactivation_table", "layer_distributions",
           "layer_widths", "lens", "neuron_mask", "perplexity", "select_neurons", "translation_items",
           "word_token_sets"]
