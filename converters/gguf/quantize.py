"""In-process quantization with llama.cpp's own quantizer (llama_model_quantize).

llama.cpp quantizes a matrix whose rows are not a multiple of the type's block (256 weights
for k-quants) with a fallback type instead (q4_K -> q5_0, q2_K -> q4_0, ...), and warns once
per tensor; a model with hidden size 576 gets hundreds of such lines. Those go to the debug
log (:mod:`edgekit.runtimes.llama_env`); what the file really holds is read back from it
(:func:`artifact_types`), recorded in the manifest and summarised in one warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

from .inspect import TensorRow, ggml_type_name, read_gguf, weight_types
from .quants import GGUFQuant

log = logging.getLogger(__name__)


# Rows llama.cpp keeps in flight per tensor (their float32 widening and quantized output). Its
# default, 8 GiB, means whole tensors: a 7B's bf16 embedding adds 2 GiB of float32 and 1 GiB of
# q8_0 on top of the mapped input. 64 MiB slabs keep the peak at the mapped tensor plus this, and
# were not slower (Gemma 3 270M f32 -> q8_0: 5.4 s, 736 MiB peak vs 7.7 s, 893 MiB).
QUANT_BUF_BYTES = 64 << 20


def quantize_file(src: Path, dst: Path, q: GGUFQuant, *, threads: int | None = None) -> None:
    """Quantize float GGUF ``src`` into ``dst`` with llama.cpp's rules for ``q`` (mixed types included)."""
    import llama_cpp

    from edgekit.runtimes.llama_env import route_llama_logs

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, q.ftype)
    params.nthread = threads or os.cpu_count() or 1
    if hasattr(params, "max_buf_size"):  # older llama-cpp-python builds lack the field
        params.max_buf_size = QUANT_BUF_BYTES
    route_llama_logs()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgekitError(f"llama.cpp failed to quantize to {q.name} (code {rc})",
                           hint="run with -vv to see llama.cpp's log")


def block_size(type_name: str) -> int:
    """Weights per block of a GGMLQuantizationType member (F16: 1, Q8_0: 32, Q4_K: 256)."""
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0])


def fallback_tensors(tensors: list[TensorRow], q: GGUFQuant) -> list[TensorRow]:
    """Matrices stored in another type than ``q``'s because their rows (ne0) are not a multiple
    of its block, as llama.cpp counts them ("N of M tensor(s) required fallback quantization").

    Vectors (norms) are never quantized and F32 matrices were not meant to be. The output head
    (``output.weight``, or the tied ``token_embd.weight``) is not a fallback: llama.cpp gives it
    q8_0 by rule when its rows do not fit a k-quant, a higher type than it would have had."""
    block = block_size(q.main_type)
    names = {t.name for t in tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    return [t for t in tensors if len(t.shape) >= 2 and t.shape[0] % block != 0
            and t.type not in (q.main_type, "F32") and not (t.name == head and t.type == "Q8_0")]


def artifact_types(path: Path, q: GGUFQuant, label: str) -> dict[str, Any]:
    """The manifest's record of what ``path`` holds: tensors per type and bits per weight.

    When llama.cpp fell back to other types, one warning says how many tensors and why: a
    "q2_k" whose matrices are mostly q4_0 has the size and quality of q4_0."""
    tensors = read_gguf(path).tensors
    types = weight_types(tensors)
    extra = types.to_extra()
    fell = fallback_tensors(tensors, q)
    if fell:
        extra["fallback_tensors"] = len(fell)
        fallback = Counter(ggml_type_name(t.type) for t in fell)
        rows = sorted({t.shape[0] for t in fell})
        log.warning("%s: %d of %d tensors fell back to %s: rows of %s are not multiples of %d "
                    "(%.2f bits per weight; %s is nominally %.2f)", label, len(fell), len(tensors),
                    "/".join(k for k, _ in fallback.most_common()), ", ".join(map(str, rows)),
                    block_size(q.main_type), types.bits_per_weight, q.name, q.bpw)
    return extra

