"""The architecture registry: one module per architecture, listed once here."""

from __future__ import annotations

from edgekit.errors import UnsupportedArchitectureError

from . import gemma3, llama, mistral, qwen2, qwen3
from .base import ArchSpec, TextConfig

ARCHS: tuple[ArchSpec, ...] = (llama.SPEC, mistral.SPEC, qwen2.SPEC, qwen3.SPEC, gemma3.SPEC)
_BY_HF = {hf: spec for spec in ARCHS for hf in spec.hf_architectures}


def supported_names() -> list[str]:
    return [f"{s.name} ({', '.join(s.hf_architectures)})" for s in ARCHS]


def spec_for(config: dict) -> ArchSpec:
    archs = config.get("architectures") or []
    for a in archs:
        if a in _BY_HF:
            return _BY_HF[a]
    name = archs[0] if archs else config.get("model_type", "unknown")
    raise UnsupportedArchitectureError(str(name), supported_names())


__all__ = ["ARCHS", "ArchSpec", "TextConfig", "spec_for", "supported_names"]
