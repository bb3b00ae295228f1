"""Output formats, registered in one table: the CLI and API dispatch through it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit._compat import StrEnum
from edgekit.errors import UnknownChoiceError


class Format(StrEnum):
    GGUF = "gguf"
    ONNX = "onnx"
    GPTQ = "gptq"


# format -> (module, conversion function); imported only when used
CONVERTERS: dict[Format, tuple[str, str]] = {
    Format.GGUF: ("edgekit.converters.gguf.convert", "convert_gguf"),
    Format.ONNX: ("edgekit.converters.onnx.convert", "convert_onnx"),
    Format.GPTQ: ("edgekit.converters.gptq.convert", "convert_gptq"),
}


# format -> (module, tuple of quant specs with a ``.name``): the names --quant accepts
QUANT_TABLES: dict[Format, tuple[str, str]] = {
    Format.GGUF: ("edgekit.converters.gguf.quants", "QUANTS"),
    Format.ONNX: ("edgekit.converters.onnx.quants", "QUANTS"),
    Format.GPTQ: ("edgekit.converters.gptq.convert", "QUANTS"),
}


# per format: what is converted when the caller names none of that format's types
DEFAULT_QUANTS: dict[Format, str] = {Format.GGUF: "f16", Format.ONNX: "fp32,int4", Format.GPTQ: "int4"}


def quant_names(fmt: Format) -> list[str]:
    module, attr = QUANT_TABLES[fmt]
    return [q.name for q in getattr(importlib.import_module(module), attr)]


def parse_formats(value: str) -> list[Format]:
    """``gguf,onnx`` -> [Format.GGUF, Format.ONNX], in the order given, without repeats."""
    out: list[Format] = []
    for part in value.split(","):
        if part.strip() and (f := parse_format(part)) not in out:
            out.append(f)
    if not out:
        raise UnknownChoiceError("output format", value, [f.value for f in Format])
    return out


def parse_format(name: str) -> Format:
    try:
        return Format(name.strip().lower())
    except ValueError:
        raise UnknownChoiceError("output format", name, [f.value for f in Format]) from None


def converter(fmt: Format) -> Callable[..., Any]:
    module, fn = CONVERTERS[fmt]
    return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


def split_quants(formats: list[Format], quants: str | None,
                 defaults: dict[Format, str] = DEFAULT_QUANTS) -> dict[Format, str]:
    """Give each format the ``quants`` names that are its own (GGUF and ONNX names are disjoint);
    a format none of the names belongs to gets its default."""
    names = [q.strip().lower() for q in (quants or "").split(",") if q.strip()]
    if len(formats) == 1:
        return {formats[0]: ",".join(names) or defaults[formats[0]]}
    known = {f: set(quant_names(f)) for f in formats}
    unknown = [q for q in names if not any(q in k for k in known.values())]
    if unknown:
        raise UnknownChoiceError("quant type", unknown[0], sorted(set().union(*known.values())))
    return {f: ",".join(q for q in names if q in known[f]) or defaults[f] for f in formats}


def convert_formats(model_dir: Path, out_dir: Path, quants: dict[Format, str], *,
                    adapter_dir: Path | None = None, options: dict[Format, dict[str, Any]] | None = None,
                    names: dict[Format, str] | None = None, name: str | None = None, **common: Any) -> list[Any]:
    """Several formats from one source in one run.

    The source is read, checked and hashed once, and the transformers reference is computed
    once, for every format. GPTQ runs first when ONNX is also asked for, and ONNX is then built
    from the new GPTQ checkpoint (its calibrated weights)."""
    from edgekit.progress import StepTimer

    from .pipeline import open_inputs

    options = {f: dict(o) for f, o in (options or {}).items()}
    order = sorted(quants, key=lambda f: f is not Format.GPTQ)  # stable: GPTQ first, the rest as given
    timer = StepTimer()
    prepared = open_inputs(Path(model_dir), adapter_dir, timer)
    results: list[Any] = []
    for fmt in order:
        result = converter(fmt)(Path(model_dir), Path(out_dir), quants[fmt], adapter_dir=adapter_dir,
                                name=(names or {}).get(fmt, name), timer=timer if not results else None,
                                prepared=prepared, **common, **options.get(fmt, {}))
        results.append(result)
        if fmt is Format.GPTQ and Format.ONNX in quants and result.artifacts:
            options.setdefault(Format.ONNX, {})["source_override"] = Path(out_dir) / result.artifacts[0].file
    return results
