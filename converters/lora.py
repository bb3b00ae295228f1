"""Merge a PEFT LoRA adapter into base weights, one tensor at a time.

A merged weight is ``W + scale * (B @ A)`` with ``scale = alpha / r`` (``alpha / sqrt(r)``
with rsLoRA). Deltas are computed while the base tensor streams through the converter,
so merging costs one extra tensor of memory, never a second copy of the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import AdapterMismatchError, InputError, ModelNotFoundError

from .safetensors_io import SafetensorsFile
from .source import SourceModel, read_json

_PREFIX = "base_model.model."
# PEFT key suffixes: Linear layers use lora_A/lora_B.weight, Embedding layers lora_embedding_A/B.
_LINEAR = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_EMBED = re.compile(r"^(?P<mod>.+)\.lora_embedding_(?P<ab>[AB])(?:\.[^.]+)?$")


@dataclass(frozen=True)
class _Pair:
    a: str
    b: str
    embedding: bool
    scale: float


class LoraAdapter:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_dir():
            raise ModelNotFoundError(f"adapter directory {path} does not exist", hint="pass the PEFT adapter directory")
        cfg_path = path / "adapter_config.json"
        if not cfg_path.is_file():
            raise ModelNotFoundError(f"no adapter_config.json in {path}", hint="pass a PEFT adapter saved with save_pretrained")
        self.path = path
        self.config: dict[str, Any] = read_json(cfg_path)
        kind = str(self.config.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise InputError(f"adapter type {kind} is not supported", hint="only LoRA adapters can be merged")
        if self.config.get("use_dora"):
            raise InputError("DoRA adapters are not supported", hint="merge it with peft's merge_and_unload and convert the result")
        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            raise ModelNotFoundError(f"no adapter_model.safetensors in {path}",
                                     hint="save the adapter with safe_serialization=True")
        self.file = SafetensorsFile(weights)
        self._pairs: dict[str, _Pair] = {}
        self._replacements: dict[str, str] = {}
        self._index()

    def _scale(self, module: str, r: int) -> float:
        alpha = float(self.config.get("lora_alpha", r))
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?{pattern}$", module):
                alpha = float(value)
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def _index(self) -> None:
        found: dict[tuple[str, bool], dict[str, str]] = {}
        for key in self.file.tensors:
            name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
            m = _LINEAR.match(name)
            emb = False
            if m is None:
                m = _EMBED.match(name)
                emb = m is not None
            if m is not None:
                found.setdefault((m["mod"], emb), {})[m["ab"]] = key
                continue
            # modules_to_save: a full replacement weight for that module
            self._replacements[name.replace(".modules_to_save", "").replace(".default", "")] = key
        for (mod, emb), ab in found.items():
            if set(ab) != {"A", "B"}:
                raise AdapterMismatchError(f"adapter {self.path} has lora_{next(iter(ab))} but not its pair for {mod}",
                                           hint="the adapter file is incomplete; re-save it")
            a_shape = self.file.tensors[ab["A"]].shape
            r = a_shape[0]
            self._pairs[mod + ".weight"] = _Pair(ab["A"], ab["B"], emb, self._scale(mod, r))

    @property
    def target_tensors(self) -> list[str]:
        return sorted(self._pairs) + sorted(self._replacements)

    def check_against(self, source: SourceModel) -> None:
        """Fail early, naming the first tensor, when the adapter was made for another base."""
        for name, pair in self._pairs.items():
            if not source.has(name) and ".experts." in name:
                # PEFT's target_parameters on transformers 5's fused expert tensors ([experts, 2 x ff,
                # hidden]): a delta per expert stack, which a checkpoint of per-expert matrices lacks
                raise AdapterMismatchError(
                    f"adapter targets the experts of a mixture of experts ({name}), which edgekit does not merge",
                    hint="merge it with PEFT first (model.merge_and_unload(), save_pretrained) and convert the merged "
                         "model; adapters on attention layers convert as they are")
            if not source.has(name):
                raise AdapterMismatchError(
                    f"adapter targets {name}, which the base model does not have",
                    hint="the adapter was trained on another base model; pass the base it was made for")
            out_dim, in_dim = source.info(name).shape
            a, b = self.file.tensors[pair.a].shape, self.file.tensors[pair.b].shape
            if pair.embedding:
                # PEFT Embedding: A is (r, num_embeddings), B is (embedding_dim, r)
                ok = a[1] == out_dim and b[0] == in_dim
            else:
                fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
                want_in, want_out = (out_dim, in_dim) if fan_in_fan_out else (in_dim, out_dim)
                ok = a[1] == want_in and b[0] == want_out
            if not ok or a[0] != b[1]:
                raise AdapterMismatchError(
                    f"adapter shapes A{list(a)} B{list(b)} do not fit base tensor {name} {[out_dim, in_dim]}",
                    hint="the adapter was trained on another base model (different sizes); pass the base it was made for")
        for name, key in self._replacements.items():
            if not source.has(name) or source.info(name).shape != self.file.tensors[key].shape:
                raise AdapterMismatchError(f"adapter replaces {name}, which the base model lacks or shapes differently",
                                           hint="pass the base model the adapter was trained on")

    def merge(self, name: str, base: np.ndarray) -> np.ndarray:
        """Return the merged float32 weight for ``name`` (``base`` itself when untouched)."""
        if name in self._replacements:
            return self.file.float32(self._replacements[name])
        pair = self._pairs.get(name)
        if pair is None:
            return base
        a = self.file.float32(pair.a)
        b = self.file.float32(pair.b)
        delta = (b @ a).T if pair.embedding else b @ a
        if not pair.embedding and self.config.get("fan_in_fan_out"):
            delta = delta.T
        return base + np.float32(pair.scale) * delta
