"""What every benchmark script does last: write its results as JSON, atomically, and say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_results(results: dict[str, Any], dest: Path) -> Path:
    from edgekit.fsutil import write_json_atomic

    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest, results)
    print(f"\nresults: {dest}")
    return dest
