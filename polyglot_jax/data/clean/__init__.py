"""Corpus cleaning: quality filters, script and language checks, dedup, PII masking."""
