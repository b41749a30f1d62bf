"""Sequence packing of text documents (the row writer is in data/rows.py).

``FIELDS`` are the fields of a packed text row; their meaning is written
where they are defined, in ``objectives/base.py`` (``TEXT_FIELDS``).
"""

from polyglot_jax.data.rows import pack_documents, padding_fraction  # noqa: F401  (the packers' API)
from polyglot_jax.objectives.base import TEXT_FIELDS as FIELDS  # noqa: F401
