"""Benchmark result files: a JSON list of records that every run updates in place."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any


def merge_records(
    path: Path, records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable]
) -> list[dict[str, Any]]:
    """Write ``records`` into the JSON list at ``path``: stored records with the same ``key`` are
    replaced, all others (other devices, sizes, benchmarks) kept. Returns the merged list."""
    keep: list[dict[str, Any]] = []
    if path.exists():
        new = {key(r) for r in records}
        keep = [r for r in json.loads(path.read_text()) if key(r) not in new]
    merged = keep + records
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged
