"""Output formats, registered in one table: the CLI and API dispatch through it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit._compat import StrEnum
from edgekit.errors import UnknownChoiceError
from edgekit.fsutil import holding_output_lock

if TYPE_CHECKING:
    from .plan import ConversionPlan


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


@holding_output_lock(1)  # one writer per output directory; a killed run's lock is taken over
def convert_formats(model_dir: Path, out_dir: Path, plan: ConversionPlan) -> list[Any]:
    """Run a plan (:mod:`.options`): several formats from one source in one run.

    The source is read, checked and hashed once, and the transformers reference is computed
    once, for every format. GPTQ runs first when ONNX is also asked for, and ONNX is then built
    from the new GPTQ checkpoint (its calibrated weights), named after it."""
    from edgekit.progress import StepTimer

    from .gptq.checkpoint import checkpoint_name
    from .options import ONNXOptions
    from .pipeline import open_inputs, slug

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    common = plan.common.converter_kwargs()
    timer = StepTimer()
    from .gguf.archs import spec_for
    from .source import load_config

    config = load_config(model_dir)
    for record in plan.formats:  # every format's support checked before any is converted
        spec_for(config, record.format.value)
    prepared = open_inputs(model_dir, plan.common.adapter, timer, quality=common["quality"])
    results: list[Any] = []
    gptq_dir: Path | None = None
    for record in plan.formats:  # in run order (GPTQ first)
        kwargs = {**common, **record.converter_kwargs()}
        if isinstance(record, ONNXOptions) and record.from_gptq is not None:
            kwargs["name"] = slug(record.from_gptq.resolve().name)
        elif isinstance(record, ONNXOptions) and plan.chained:
            if gptq_dir is None:  # the quality gate refused the GPTQ checkpoint: nothing to build from
                continue
            gptq = plan.get(Format.GPTQ)
            kwargs["source_override"] = gptq_dir
            kwargs["name"] = checkpoint_name(slug(plan.common.name or model_dir.resolve().name),
                                             gptq.bits, gptq.group_size)
        result = converter(record.format)(model_dir, out_dir, ",".join(record.quant_names),
                                          timer=timer if not results else None, prepared=prepared, **kwargs)
        results.append(result)
        if record.format is Format.GPTQ and result.artifacts:
            gptq_dir = out_dir / result.artifacts[0].file
    return results
