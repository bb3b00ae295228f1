"""Output formats, registered in one table: the CLI and API dispatch through it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any

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


def quant_names(fmt: Format) -> list[str]:
    if fmt not in QUANT_TABLES:
        return []
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
