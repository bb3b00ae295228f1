"""Random bf16 checkpoints for the conversion benchmarks: written straight to safetensors, a
tensor at a time from one pool of random values, so a 7B costs disk, not memory."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_random_bf16(path: Path, tensors: Sequence[tuple[str, tuple[int, ...]]], seed: int = 0, *,
                      pool_floats: int = 16 << 20, std: float = 0.02, vectors_near_one: bool = False) -> Path:
    """``path`` (model.safetensors) with N(0, std) bf16 values for every (name, shape).

    The values cycle through a pool of ``pool_floats`` random numbers from a random start per
    tensor (a model of billions of weights needs no more randomness than that to convert like
    a real one). ``vectors_near_one``: 1-D tensors (norm weights) are 1 + noise, as trained ones."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shp in tensors:
        n = math.prod(shp) * 2
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    pool = ((((rng.standard_normal(pool_floats, dtype=np.float32) * std).view(np.uint32) + 0x8000) >> 16)
            .astype(np.uint16))  # rounded to bf16
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _name, shp in tensors:
            left, start = math.prod(shp), int(rng.integers(pool.size))
            while left:
                chunk = pool[start:start + left]
                if vectors_near_one and len(shp) == 1:  # through float32, truncated back to bf16
                    chunk = (((chunk.astype(np.uint32) << 16).view(np.float32) + 1.0).view(np.uint32) >> 16
                             ).astype(np.uint16)
                f.write(chunk.tobytes())
                left -= chunk.size
                start = 0
    return path
