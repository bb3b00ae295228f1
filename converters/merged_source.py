"""Materialize base + LoRA as a plain Hugging Face directory, for tools that read only those.

ONNX Runtime GenAI's builder (and other third-party exporters) read a model directory,
not an adapter: edgekit merges the adapter itself (the same merge the GGUF writer uses,
checked against PEFT's own forward by verification) and streams the merged float32
tensors into one safetensors file, one tensor in memory at a time.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from .lora import LoraAdapter
from .source import INDEX_FILE, SourceModel

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_merged_source(source: SourceModel, adapter: LoraAdapter, dest: Path) -> Path:
    """Write ``dest`` = config/tokenizer files of ``source`` + merged weights (float32)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.path.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != INDEX_FILE:
            shutil.copy2(f, dest / f.name)
    names = source.names()
    header: dict[str, object] = {"__metadata__": {"format": "pt", "merged_by": "edgekit"}}
    offset = 0
    for name in names:
        shape = list(source.info(name).shape)
        nbytes = 4 * int(source.info(name).numel)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as the format recommends
    out = dest / "model.safetensors"
    with open(out, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name in names:
            fh.write(adapter.merge(name, source.float32(name)).astype("<f4", copy=False).tobytes())
    return dest
