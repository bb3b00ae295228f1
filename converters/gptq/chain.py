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

What a run may ask of it (ONNX from GPTQ is int4 only; ``--from-gptq`` and ``--to gptq,onnx``
exclude each other) is checked by the option records (:mod:`edgekit.converters.options`),
and :func:`edgekit.converters.registry.convert_formats` runs GPTQ first and hands its
checkpoint to the ONNX build.
"""

from __future__ import annotations

from edgekit.manifest import ArtifactEntry


def gain_lines(artifacts: list[ArtifactEntry]) -> list[str]:
    """The GPTQ-vs-RTN line of every GPTQ artifact that was verified."""
    from .convert import gain_line

    return [gain_line(a.extra) for a in artifacts if a.format == "gptq" and a.extra.get("rtn")]
