"""The source of a conversion: a Hugging Face model directory (config, safetensors, tokenizer).

Only metadata is read eagerly; tensors are read one at a time so that peak memory stays
near the largest tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CorruptFileError, InputError, ModelNotFoundError

from .safetensors_io import SafetensorsFile, TensorInfo

INDEX_FILE = "model.safetensors.index.json"


@dataclass
class SourceModel:
    path: Path
    config: dict[str, Any]
    files: list[SafetensorsFile] = field(repr=False)
    _where: dict[str, SafetensorsFile] = field(repr=False)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return str(archs[0]) if archs else str(self.config.get("model_type", "?"))

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def names(self) -> list[str]:
        return list(self._where)

    def info(self, name: str) -> TensorInfo:
        return self._where[name].tensors[name]

    def has(self, name: str) -> bool:
        return name in self._where

    def float32(self, name: str) -> np.ndarray:
        return self._where[name].float32(name)

    def file_of(self, name: str) -> SafetensorsFile:
        return self._where[name]

    def blocks(self, name: str, max_bytes: int) -> Iterator[np.ndarray]:
        """The tensor as stored, in row blocks (see :meth:`SafetensorsFile.blocks`)."""
        return self._where[name].blocks(name, max_bytes)

    def span_blocks(self, name: str, lo: int, hi: int, max_bytes: int) -> Iterator[np.ndarray]:
        """Rows ``[lo, hi)`` (last-axis rows, leading axes flattened; see :meth:`SafetensorsFile.span_blocks`)."""
        return self._where[name].span_blocks(name, lo, hi, max_bytes)

    def dtype_tags(self) -> set[str]:
        return {f.tensors[n].dtype for n, f in self._where.items()}

    def iter_infos(self) -> Iterator[TensorInfo]:
        for name, f in self._where.items():
            yield f.tensors[name]

    def weights_sha256(self) -> str:
        """sha256 over the weight files in name order (one file: that file's sha256)."""
        paths = sorted(f.path for f in self.files)
        if len(paths) == 1:
            return file_sha256(paths[0])
        h = hashlib.sha256()
        for p in paths:
            h.update(f"{p.name}:{file_sha256(p)}\n".encode())
        return h.hexdigest()

    @property
    def weights_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """A file's sha256, read into one reused buffer: hashing runs beside a conversion, whose
    memory should not grow by the allocator keeping freed read chunks."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    from edgekit.validate import MAX_TOKENIZER_JSON, read_json_bounded

    try:  # refused by size before it is read, by depth while it is parsed (untrusted input)
        data = read_json_bounded(path, MAX_TOKENIZER_JSON)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    if not isinstance(data, dict):
        raise CorruptFileError(path, "expected a JSON object")
    return data


def load_config(model_dir: Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelNotFoundError(f"model directory {model_dir} does not exist",
                                 hint="pass the path of a Hugging Face model directory")
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"{model_dir} is not a directory",
                                 hint="pass the directory holding config.json and *.safetensors")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"no config.json in {model_dir}",
                                 hint="pass a Hugging Face model directory (saved with save_pretrained)")
    return read_json(cfg_path)


def open_source(model_dir: Path) -> SourceModel:
    from edgekit.validate import check_tokenizer_files

    model_dir = Path(model_dir)
    config = load_config(model_dir)
    check_tokenizer_files(model_dir, parse=False)  # sizes first; the vocabulary reader parses them (bounded)
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptFileError(index, "has no weight_map")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise ModelNotFoundError(f"shard {missing[0]} listed in {INDEX_FILE} is missing from {model_dir}",
                                     hint="download every shard of the model")
        paths = [model_dir / n for n in names]
    else:
        paths = sorted(model_dir.glob("*.safetensors"))
        paths = [p for p in paths if not p.name.startswith("adapter_")]
    if not paths:
        bins = list(model_dir.glob("*.bin")) + list(model_dir.glob("*.pth"))
        hint = ("re-save it with save_pretrained(..., safe_serialization=True); pickled .bin weights are not read "
                "because loading them can run code") if bins else "save the model with save_pretrained"
        raise ModelNotFoundError(f"no *.safetensors weights in {model_dir}", hint=hint)
    files = [SafetensorsFile(p) for p in paths]
    where: dict[str, SafetensorsFile] = {}
    for f in files:
        for name in f.tensors:
            where[name] = f
    return SourceModel(model_dir, config, files, where)
