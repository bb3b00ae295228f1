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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, InputError

from .inspect import TensorRow, ggml_type_name, read_gguf, weight_types
from .quants import GGUFQuant

log = logging.getLogger(__name__)


# Rows llama.cpp keeps in flight per tensor (their float32 widening and quantized output). Its
# default, 8 GiB, means whole tensors: a 7B's bf16 embedding adds 2 GiB of float32 and 1 GiB of
# q8_0 on top of the mapped input. 64 MiB slabs keep the peak at the mapped tensor plus this, and
# were not slower (Gemma 3 270M f32 -> q8_0: 5.4 s, 736 MiB peak vs 7.7 s, 893 MiB).
QUANT_BUF_BYTES = 64 << 20


# llama_model_quantize_params as llama.h of llama-cpp-python 0.3.36 declares it: (field, byte
# offset). The library cannot be asked for its layout, so the binding's is checked against this
# and llama_model_quantize_default_params() must come back with llama.cpp's defaults: a shifted
# layout would hand llama.cpp a garbage pointer as the importance matrix.
Layout = tuple[tuple[str, int], ...]
_PARAMS_LAYOUT: Layout = (("nthread", 0), ("ftype", 4), ("output_tensor_type", 8), ("token_embedding_type", 12),
                  ("allow_requantize", 16), ("quantize_output_tensor", 17), ("only_copy", 18), ("pure", 19),
                  ("keep_split", 20), ("dry_run", 21), ("imatrix", 24), ("kv_overrides", 32),
                  ("tt_overrides", 40), ("prune_layers", 48), ("max_buf_size", 56))
_IMATRIX_LAYOUT: Layout = (("name", 0), ("data", 8), ("size", 16))
_OVERRIDE_LAYOUT: Layout = (("pattern", 0), ("type", 8))


def _layout(struct: Any) -> Layout:
    return tuple((f[0], int(getattr(struct, f[0]).offset)) for f in struct._fields_)


def check_binding(need_imatrix: bool, need_overrides: bool) -> None:
    """Refuse clearly when this llama-cpp-python cannot pass an importance matrix or tensor types."""
    import llama_cpp

    fix = "install llama-cpp-python 0.3.36 (the version edgekit is tested with)"
    what = "an importance matrix" if need_imatrix else "per-tensor types"
    structs: list[tuple[str, Layout]] = [("llama_model_quantize_params", _PARAMS_LAYOUT)]
    if need_imatrix:
        structs.append(("llama_model_imatrix_data", _IMATRIX_LAYOUT))
    if need_overrides:
        structs.append(("llama_model_tensor_override", _OVERRIDE_LAYOUT))
    for name, want in structs:
        struct = getattr(llama_cpp, name, None)
        if struct is None or _layout(struct) != want:
            raise EdgekitError(f"this llama-cpp-python ({getattr(llama_cpp, '__version__', '?')}) lays out {name} "
                               f"differently from the llama.h edgekit passes {what} through", hint=fix)
    d = llama_cpp.llama_model_quantize_default_params()
    count = int(getattr(llama_cpp, "GGML_TYPE_COUNT", 0)) or d.output_tensor_type
    if (d.output_tensor_type != count or d.token_embedding_type != count or not d.quantize_output_tensor
            or d.pure or d.dry_run or d.imatrix or d.kv_overrides or d.tt_overrides or d.prune_layers):
        raise EdgekitError("llama_model_quantize_default_params() does not return llama.cpp's defaults: the "
                           "binding's struct layout differs from the loaded library's", hint=fix)


def quantize_file(src: Path, dst: Path, q: GGUFQuant, *, threads: int | None = None,
                  imatrix: Mapping[str, np.ndarray] | None = None,
                  tensor_types: Sequence[tuple[str, str]] = ()) -> None:
    """Quantize float GGUF ``src`` into ``dst`` with llama.cpp's rules for ``q`` (mixed types included).

    ``imatrix``: GGUF tensor name -> per-channel mean squared activation (:meth:`.imatrix.Imatrix.values`);
    ``tensor_types``: (regex, ggml type name) pairs, llama-quantize's ``--tensor-type``, first match wins."""
    import llama_cpp

    from edgekit.runtimes.llama_env import route_llama_logs

    if q.needs_imatrix and not imatrix:
        raise imatrix_needed(q.name)
    if imatrix or tensor_types:
        check_binding(bool(imatrix), bool(tensor_types))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, q.ftype)
    params.nthread = threads or os.cpu_count() or 1
    if hasattr(params, "max_buf_size"):  # older llama-cpp-python builds lack the field
        params.max_buf_size = QUANT_BUF_BYTES
    keep: list[Any] = []  # every ctypes buffer the params point into, alive until the call returns
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed: the terminator
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep += [data, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if tensor_types:
        import gguf

        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, type_name) in enumerate(tensor_types):
            keep.append(pattern.encode())
            overrides[i].pattern = keep[-1]
            overrides[i].type = int(gguf.GGMLQuantizationType[type_name])
        keep.append(overrides)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    route_llama_logs()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep
    if rc != 0:
        raise EdgekitError(f"llama.cpp failed to quantize to {q.name} (code {rc})",
                           hint="run with -vv to see llama.cpp's log")


def imatrix_needed(name: str) -> InputError:
    return InputError(f"GGUF type {name} needs an importance matrix (llama.cpp refuses it without one)",
                      hint="add --imatrix / imatrix=True to compute one from the model, or --imatrix FILE / "
                           "imatrix=FILE for one made by llama-imatrix")


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


def artifact_types(path: Path, q: GGUFQuant, label: str, *, fallbacks: bool = True) -> dict[str, Any]:
    """The manifest's record of what ``path`` holds: tensors per type and bits per weight.

    When llama.cpp fell back to other types, one warning says how many tensors and why: a
    "q2_k" whose matrices are mostly q4_0 has the size and quality of q4_0."""
    tensors = read_gguf(path).tensors
    types = weight_types(tensors)
    extra = types.to_extra()
    fell = fallback_tensors(tensors, q) if fallbacks else []
    if fell:
        extra["fallback_tensors"] = len(fell)
        fallback = Counter(ggml_type_name(t.type) for t in fell)
        rows = sorted({t.shape[0] for t in fell})
        log.warning("%s: %d of %d tensors fell back to %s: rows of %s are not multiples of %d "
                    "(%.2f bits per weight; %s is nominally %.2f)", label, len(fell), len(tensors),
                    "/".join(k for k, _ in fallback.most_common()), ", ".join(map(str, rows)),
                    block_size(q.main_type), types.bits_per_weight, q.name, q.bpw)
    return extra

