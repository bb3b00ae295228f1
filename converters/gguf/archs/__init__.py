"""The architecture registry: one module per architecture, listed once here.

Each spec is the single source for every format: its HF class names, its GGUF mapping and
hooks, which formats convert it, and (derived from its layout) the profiler's tensor list.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import UnsupportedArchitectureError

from . import (
    gemma2,
    gemma3,
    gemma4,
    granite,
    granitehybrid,
    lfm2,
    llama,
    ministral3,
    mistral,
    mixtral,
    olmo2,
    phi3,
    qwen2,
    qwen3,
    qwen3_moe,
    qwen35,
    smollm3,
)
from .base import ArchSpec, Composite, ExpertLayout, Piece, TextConfig

FORMATS = ("gguf", "onnx", "gptq")  # the registry's Format values, in its order

ARCHS: tuple[ArchSpec, ...] = (llama.SPEC, mistral.SPEC, qwen2.SPEC, qwen3.SPEC, gemma3.SPEC, phi3.SPEC,
                               gemma2.SPEC, granite.SPEC, smollm3.SPEC, olmo2.SPEC, gemma3.VL_SPEC,
                               mistral.VL_SPEC, lfm2.SPEC, ministral3.SPEC, granitehybrid.SPEC, qwen35.SPEC,
                               qwen35.VL_SPEC, qwen3_moe.SPEC, mixtral.SPEC, gemma4.SPEC, gemma4.VL_SPEC)
_BY_HF = {hf: spec for spec in ARCHS for hf in spec.hf_architectures}
_REFUSED = dict(qwen35.REFUSED)  # classes of a supported family that are not converted: (class, why)


def supported_names(fmt: str | None = None) -> list[str]:
    return [f"{s.name} ({', '.join(s.hf_architectures)})" for s in ARCHS if fmt is None or s.supports(fmt)]


def _per_format() -> str:
    return "; ".join(f"{fmt}: {', '.join(s.name for s in ARCHS if s.supports(fmt))}" for fmt in FORMATS)


def spec_for(config: dict[str, Any], fmt: str | None = None) -> ArchSpec:
    """The spec of a config.json's architecture, its required fields checked; with ``fmt``,
    also whether that format converts it. One-line errors list what is supported per format."""
    archs = config.get("architectures") or []
    spec = next((_BY_HF[a] for a in archs if a in _BY_HF), None)
    if spec is None:
        name = archs[0] if archs else config.get("model_type", "unknown")
        if name in _REFUSED:
            err = UnsupportedArchitectureError(str(name), [])
            err.message, err.hint = f"{name} is not supported: {_REFUSED[name]}", "edgekit support lists what converts"
            raise err
        err = UnsupportedArchitectureError(str(name), supported_names())
        err.hint = f"supported, by format: {_per_format()} (their Hugging Face classes: edgekit support)"
        raise err
    spec = spec.for_config(config)
    spec.check_config(config)
    if fmt is not None and not spec.supports(fmt):
        err = UnsupportedArchitectureError(spec.name, [])
        err.message = f"{spec.name} cannot be converted to {fmt}: {spec.why_not_for(fmt)}"
        err.hint = (f"{fmt} supports {', '.join(s.name for s in ARCHS if s.supports(fmt))}; "
                    f"{spec.name} converts to {', '.join(spec.formats)}")
        raise err
    return spec


def support_rows() -> list[dict[str, Any]]:
    """Architecture x format, as data: what ``edgekit support`` and the README table show."""
    return [{"arch": s.name, "hf_classes": list(s.hf_architectures), "gguf_arch": s.gguf_arch.lower(),
             **{fmt: s.supports(fmt) for fmt in FORMATS},
             "notes": "; ".join(dict.fromkeys(why for _, why in s.why_not))} for s in ARCHS]


def support_markdown() -> str:
    """The README's support table (a test checks the README holds exactly this)."""
    lines = ["| architecture | Hugging Face classes | GGUF | ONNX | GPTQ | notes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in support_rows():
        marks = " | ".join("yes" if r[f] else "no" for f in FORMATS)
        lines.append(f"| {r['arch']} | {', '.join(r['hf_classes'])} | {marks} | {r['notes']} |")
    return "\n".join(lines)


__all__ = ["ARCHS", "FORMATS", "ArchSpec", "Composite", "ExpertLayout", "Piece", "TextConfig", "spec_for", "support_markdown", "support_rows",
           "supported_names"]
