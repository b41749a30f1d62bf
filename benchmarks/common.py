"""Shared by the benchmark scripts."""

import json
import os


def write_json(result: dict, path: str) -> None:
  """Writes a benchmark's result dict to ``path`` (folders created)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
