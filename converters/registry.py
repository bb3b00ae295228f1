"""Output formats, registered in one table: the CLI and API dispatch through it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from edgekit.errors import UnknownChoiceError


class Format(StrEnum):
    GGUF = "gguf"


# format -> (module, conversion function); imported only when used
CONVERTERS: dict[Format, tuple[str, str]] = {
    Format.GGUF: ("edgekit.converters.gguf.convert", "convert_gguf"),
}


def parse_format(name: str) -> Format:
    try:
        return Format(name.strip().lower())
    except ValueError:
        raise UnknownChoiceError("output format", name, [f.value for f in Format]) from None


def converter(fmt: Format) -> Callable[..., Any]:
    module, fn = CONVERTERS[fmt]
    return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]
