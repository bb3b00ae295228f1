"""One conversion request, planned: which formats, and each format's typed options record.

:func:`plan_conversion` is what the CLI (from its flags) and :func:`edgekit.convert` (from its
keyword arguments) both call: ``quants`` is split by format, every other keyword goes to the
record of the format it belongs to (:data:`OWNER`), the calibration keywords to every format
that uses them, and a keyword of a format not asked for is an error. The records themselves
are in :mod:`.options`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import InputError, UnknownChoiceError

from .options import (
    ALIASES,
    CommonOptions,
    FormatOptions,
    GGUFOptions,
    GPTQOptions,
    ONNXOptions,
    gptq_onnx_quants,
    opt,
    split_names,
)
from .registry import Format, parse_formats, split_quants

RECORDS: dict[Format, type[GGUFOptions] | type[ONNXOptions] | type[GPTQOptions]] = {
    Format.GGUF: GGUFOptions, Format.ONNX: ONNXOptions, Format.GPTQ: GPTQOptions}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# keywords more than one record has: ``quants`` is split by format; the calibration text and
# its windows are GPTQ's and a computed importance matrix's (GGUF, only with imatrix=True)
CALIBRATION_KEYS = ("calibration", "samples", "seq_len")
SHARED = ("quants", *CALIBRATION_KEYS)
# keyword -> the format whose record has it (None: common)
OWNER: dict[str, Format | None] = {**{n: None for n in _fields(CommonOptions)},
                                   **{n: fmt for fmt, cls in RECORDS.items() for n in _fields(cls) if n not in SHARED}}
assert len(OWNER) == len(_fields(CommonOptions)) + sum(len([n for n in _fields(c) if n not in SHARED])
                                                       for c in RECORDS.values()), "a keyword in two records"
KEYWORDS: tuple[str, ...] = tuple(sorted((*SHARED, *OWNER)))


@dataclass(frozen=True)
class ConversionPlan:
    """The formats of one run with their options, in the order they run."""

    formats: tuple[FormatOptions, ...]
    common: CommonOptions = field(default_factory=CommonOptions)

    def __post_init__(self) -> None:
        seen = [f.format for f in self.formats]
        if not seen or len(set(seen)) != len(seen):
            raise InputError(f"a plan needs each format once, got {[f.value for f in seen]}",
                             hint="pass one record per format")
        onnx, gptq = self.get(Format.ONNX), self.get(Format.GPTQ)
        if onnx is not None and gptq is not None:
            if onnx.from_gptq is not None:
                raise InputError(f"{opt('from_gptq')} builds ONNX from an existing GPTQ checkpoint, but this run also "
                                 f"quantizes with GPTQ", hint="use --to gptq,onnx / to='gptq,onnx' without it (ONNX "
                                                              "is then built from the new checkpoint), or --to onnx")
            onnx = dataclasses.replace(onnx, quants=gptq_onnx_quants(onnx.quants, "--to gptq,onnx"))
        # GPTQ first: ONNX reads its checkpoint; the rest in the order given
        ordered = sorted((onnx if f.format is Format.ONNX and onnx is not None else f for f in self.formats),
                         key=lambda f: f.format is not Format.GPTQ)
        object.__setattr__(self, "formats", tuple(ordered))

    def get(self, fmt: Format) -> Any:
        """The record of ``fmt`` (typed by the caller), or None when the run does not produce it."""
        return next((f for f in self.formats if f.format is fmt), None)

    @property
    def chained(self) -> bool:
        """ONNX is built from this run's GPTQ checkpoint."""
        return self.get(Format.GPTQ) is not None and self.get(Format.ONNX) is not None


def plan_conversion(to: str | list[str] | tuple[str, ...] = "gguf", *,
                    defaults: dict[Format, str] | None = None, **keywords: Any) -> ConversionPlan:
    """Route keyword options (the CLI's flags by their keyword names) to the records they belong to.

    ``quants`` names types of every requested format (``"q4_k_m,int4"``); a format none of the
    names belongs to gets its default (``defaults`` replaces the built-in ones, e.g. ``--demo``).
    Unknown keywords and keywords of formats not in ``to`` are InputErrors."""
    formats = parse_formats(",".join(to) if isinstance(to, list | tuple) else str(to))
    for alias, real in ALIASES.items():
        if alias in keywords:
            if real in keywords:
                raise InputError(f"{alias}= and {real}= name the same option", hint=f"pass only {real}=")
            keywords[real] = keywords.pop(alias)
    per_format: dict[Format, dict[str, Any]] = {f: {} for f in formats}
    common: dict[str, Any] = {}
    for key, value in keywords.items():
        if key == "quants":
            continue
        if key in CALIBRATION_KEYS:
            _route_calibration(key, value, keywords, per_format)
            continue
        if key not in OWNER:
            raise UnknownChoiceError("convert option", key, KEYWORDS)
        owner = OWNER[key]
        if owner is None:
            common[key] = value
        elif owner not in per_format:
            raise InputError(f"{opt(key)} applies to {owner.value} only, but this run converts to "
                             f"{','.join(f.value for f in formats)}",
                             hint=f"add {owner.value} to --to / to=, or drop {key}")
        else:
            per_format[owner][key] = value
    asked = split_names(keywords.get("quants"))
    split = split_quants(formats, ",".join(asked) or None, {f: "" for f in formats})
    for fmt in formats:
        names = split_names(split[fmt])
        if fmt is Format.GPTQ:
            if names:
                per_format[fmt]["bits"] = _bits_from_names(names, per_format[fmt].get("bits"))
        elif names:
            per_format[fmt]["quants"] = names
        elif defaults and fmt in defaults and not (fmt is Format.ONNX and (
                Format.GPTQ in formats or per_format[fmt].get("from_gptq") is not None)):
            per_format[fmt]["quants"] = split_names(defaults[fmt])  # ONNX from GPTQ: int4, whatever the defaults
    records = tuple(RECORDS[fmt](**per_format[fmt]) for fmt in formats)
    return ConversionPlan(records, CommonOptions(**common))


def _route_calibration(key: str, value: Any, keywords: dict[str, Any], per_format: dict[Format, dict[str, Any]]) -> None:
    """The calibration text and windows go to GPTQ and to GGUF's computed importance matrix, whichever run."""
    fit_kl = (keywords.get("fit_size") is not None or keywords.get("fit") is not None) \
        and keywords.get("fit_method", "kl") == "kl" and key == "calibration"
    takers = [f for f in per_format if f is Format.GPTQ
              or (f is Format.GGUF and (keywords.get("imatrix") is True or fit_kl))]
    if not takers:
        raise InputError(f"{opt(key)} applies to gptq only (and to gguf with --imatrix / imatrix=True), but this "
                         f"run converts to {','.join(f.value for f in per_format)}",
                         hint=f"add gptq to --to / to=, or --imatrix / imatrix=True for GGUF, or drop {key}")
    for fmt in takers:
        per_format[fmt][key] = value


def _bits_from_names(names: tuple[str, ...], bits: Any) -> int:
    """``-q int4`` / ``-q int8`` say GPTQ's width, as ``--bits`` does; they must agree."""
    from .gptq.convert import resolve_bits

    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)):
        return bits  # GPTQOptions says what --bits must be
    named = resolve_bits(list(names), 4)  # checks the names; an explicit --bits 4 must agree too
    if bits is not None and bits != named:
        raise InputError(f"--quant / quants= {names[0]} and --bits / bits={bits} disagree", hint="pass one of them")
    return named
