"""GPTQ -> ONNX: ``--to gptq,onnx`` and ``--to onnx --from-gptq DIR``.

ONNX Runtime GenAI's builder reads a classic GPTQ checkpoint (``quant_method: gptq``) and
repacks its ``qweight``/``qzeros``/``scales`` into ``MatMulNBits`` unchanged (checked: an
ONNX model built from an edgekit GPTQ checkpoint with the embedding and LM head excluded
from the builder's own quantization and ``accuracy_level=1`` matches the dequantized
checkpoint to KL 2e-12). It is invoked exactly like for a float source -- ``-i GPTQ_DIR
-p int4 -e cpu`` -- with the GPTQ directory as input (it carries config, tokenizer and
weights); the builder still quantizes what the checkpoint left in float (the tied
embedding / LM head) with its own int4 algorithm, and verification compares the result
with the original float source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import InputError
from edgekit.manifest import ArtifactEntry

from ..pipeline import slug
from ..registry import Format, quant_names

GPTQ_ONNX_QUANT = "int4"  # the builder precision that keeps prequantized weights as MatMulNBits


def chain_onnx(formats: list[Format], per_format: dict[Format, str], quants: str | None, from_gptq: Path | None,
               specific: dict[Format, dict[str, Any]], name: str | None, model_dir: Path
               ) -> tuple[list[Format], dict[Format, str], dict[Format, str]]:
    """Order the formats so GPTQ is written before ONNX reads it; name and type the ONNX build."""
    names: dict[Format, str] = {}
    if Format.GPTQ in formats:  # -q int4/int8 and --bits say the same thing; a clash is an error
        from .convert import resolve_bits

        asked_bits = [q.strip() for q in (quants or "").lower().split(",") if q.strip() in ("int4", "int8")]
        gptq_opts = specific.setdefault(Format.GPTQ, {})
        if asked_bits:
            gptq_opts["bits"] = resolve_bits(asked_bits[0], gptq_opts.get("bits", 4))
        per_format = {**per_format, Format.GPTQ: f"int{gptq_opts.get('bits', 4)}"}
    chained = Format.GPTQ in formats and Format.ONNX in formats
    if from_gptq is not None:
        if Format.ONNX not in formats or Format.GPTQ in formats:
            raise InputError("--from-gptq builds ONNX from an existing GPTQ checkpoint",
                             hint="use it with --to onnx (or use --to gptq,onnx to quantize and build in one go)")
        from .checkpoint import read_layout

        read_layout(Path(from_gptq))  # a clear error now (config + header, no tensor read), not a builder traceback later
        specific.setdefault(Format.ONNX, {})["source_override"] = Path(from_gptq)
        names[Format.ONNX] = slug(Path(from_gptq).resolve().name)
    elif chained:
        from .checkpoint import checkpoint_name

        formats = [Format.GPTQ] + [f for f in formats if f is not Format.GPTQ]
        gs = specific.get(Format.GPTQ, {}).get("group_size", 128)
        bits = specific.get(Format.GPTQ, {}).get("bits", 4)
        names[Format.ONNX] = checkpoint_name(slug(name or Path(model_dir).resolve().name), bits, gs)
    if from_gptq is not None or chained:
        asked = [q.strip().lower() for q in (quants or "").split(",") if q.strip()]
        onnx_asked = [q for q in asked if q in quant_names(Format.ONNX)]
        if set(onnx_asked) - {GPTQ_ONNX_QUANT}:
            raise InputError(f"ONNX from a GPTQ checkpoint is built as {GPTQ_ONNX_QUANT} only, not "
                             f"{','.join(q for q in onnx_asked if q != GPTQ_ONNX_QUANT)}",
                             hint="drop the other ONNX types, or build them from MODEL_DIR in a separate run")
        per_format = {**per_format, Format.ONNX: GPTQ_ONNX_QUANT}
    return formats, per_format, names


def gain_lines(artifacts: list[ArtifactEntry]) -> list[str]:
    """The GPTQ-vs-RTN line of every GPTQ artifact that was verified."""
    from .convert import gain_line

    return [gain_line(a.extra) for a in artifacts if a.format == "gptq" and a.extra.get("rtn")]
