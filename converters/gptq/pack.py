"""The classic GPTQ tensor layout: ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx``.

This is the layout AutoGPTQ wrote and transformers, vLLM and ONNX Runtime GenAI's model
builder read (``quant_method: "gptq"``, ``checkpoint_format: "gptq"`` a.k.a. v1). For a
Linear with ``out x in`` weights, ``bits`` in {4, 8} and ``pack = 32 // bits`` codes per
int32 word (lowest bits first):

===========  ===========================  =============================================
tensor       shape / dtype                content
===========  ===========================  =============================================
``qweight``  ``[in / pack, out]`` int32   unsigned codes packed along the *input* dim
``qzeros``   ``[groups, out / pack]`` i32  zero points **minus one** (v1), packed along
                                           the *output* dim
``scales``   ``[groups, out]`` float16    one scale per (group, output row)
``g_idx``    ``[in]`` int32               group of each input column
===========  ===========================  =============================================

``W[o, i] = scales[g, o] * (code[i, o] - zero[g, o])`` with ``g = g_idx[i]``. The v1
"minus one" is a historical AutoGPTQ quirk every v1 reader undoes (ONNX Runtime GenAI's
loader adds 1 and masks to ``bits``); symmetric quantization has zero ``2**(bits-1)``, so
the stored nibble is 7 and never wraps.

Everything here is numpy, independent of torch and llmcompressor, so reading a checkpoint
back through :func:`dequantize` is an independent check of what was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgekit.errors import InputError

SUPPORTED_BITS = (4, 8)
LINEAR_TENSORS = ("qweight", "qzeros", "scales", "g_idx")  # per quantized Linear, in file order


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise InputError(f"GPTQ supports 4 or 8 bits, not {bits}",
                         hint="pass --bits 4 / bits=4 (int4, the usual choice) or --bits 8 / bits=8")
    return bits


def check_group_value(group_size: int) -> int:
    """A group size in itself (whether it divides the model's widths is checked on the model)."""
    if group_size == 0 or group_size < -1:
        raise InputError(f"--group-size / group_size= must be a positive number or -1 (per row), not {group_size}",
                         hint="128 is the usual choice")
    return group_size


def _per_word(bits: int) -> int:
    return 32 // check_bits(bits)


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` ``[R, C]`` along rows: ``[R / per_word, C]`` int32."""
    k = _per_word(bits)
    rows, cols = codes.shape
    if rows % k:
        raise ValueError(f"cannot pack {rows} rows into words of {k} codes")
    c = codes.astype(np.uint32).reshape(rows // k, k, cols)
    if int(c.max(initial=0)) >= 1 << bits:
        raise ValueError(f"codes exceed {bits} bits")
    words = np.zeros((rows // k, cols), dtype=np.uint32)
    for j in range(k):
        words |= c[:, j, :] << np.uint32(bits * j)
    return words.view(np.int32)


def unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: ``[R, C]`` int32 -> ``[R * per_word, C]`` uint8 codes."""
    k = _per_word(bits)
    w = np.ascontiguousarray(words).view(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    out = np.stack([(w >> np.uint32(bits * j)) & mask for j in range(k)], axis=1)
    return out.reshape(w.shape[0] * k, w.shape[1]).astype(np.uint8)


@dataclass
class GPTQTensors:
    """One quantized Linear in checkpoint form (see the module docstring for the layout)."""

    qweight: np.ndarray
    qzeros: np.ndarray
    scales: np.ndarray
    g_idx: np.ndarray
    bits: int

    @property
    def in_features(self) -> int:
        return int(self.g_idx.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[1])

    def items(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.qweight": self.qweight, f"{prefix}.qzeros": self.qzeros,
                f"{prefix}.scales": self.scales, f"{prefix}.g_idx": self.g_idx}


def pack_linear(codes: np.ndarray, zeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray,
                bits: int) -> GPTQTensors:
    """``codes`` ``[out, in]`` unsigned, ``zeros`` / ``scales`` ``[out, groups]`` -> checkpoint tensors."""
    check_bits(bits)
    out_f, in_f = codes.shape
    if zeros.shape != scales.shape or zeros.shape[0] != out_f or g_idx.shape != (in_f,):
        raise ValueError(f"inconsistent shapes: codes {codes.shape}, zeros {zeros.shape}, "
                         f"scales {scales.shape}, g_idx {g_idx.shape}")
    if int(zeros.min()) < 1:
        # v1 stores zero-1; a zero of 0 would wrap to 2**bits-1, which several v1 readers
        # turn into 2**bits instead of 0. Symmetric quantization never produces it.
        raise ValueError("a zero point of 0 cannot be stored in the GPTQ v1 format")
    mask = (1 << bits) - 1
    return GPTQTensors(
        qweight=pack_rows(codes.T, bits),
        qzeros=_pack_cols((zeros.astype(np.int64) - 1) & mask, bits),
        scales=np.ascontiguousarray(scales.T.astype(np.float16)),
        g_idx=g_idx.astype(np.int32),
        bits=bits,
    )


def _pack_cols(zeros_minus_one: np.ndarray, bits: int) -> np.ndarray:
    """``[out, groups]`` -> ``[groups, out / per_word]``: packed along the output dim."""
    return np.ascontiguousarray(pack_rows(zeros_minus_one.astype(np.uint32), bits).T)


@dataclass
class Unpacked:
    codes: np.ndarray  # [out, in] uint8
    zeros: np.ndarray  # [out, groups] int (v1 offset undone)
    scales: np.ndarray  # [out, groups] float16
    g_idx: np.ndarray  # [in] int32


def unpack_linear(t: GPTQTensors) -> Unpacked:
    mask = (1 << t.bits) - 1
    codes = unpack_rows(t.qweight, t.bits).T
    zeros = (unpack_rows(np.ascontiguousarray(t.qzeros.T), t.bits).astype(np.int64) + 1) & mask
    # symmetric 2**(bits-1) and every asymmetric zero but 0 survive the mask unchanged
    return Unpacked(np.ascontiguousarray(codes), np.ascontiguousarray(zeros), np.ascontiguousarray(t.scales.T),
                    t.g_idx.astype(np.int32))


def dequantize(t: GPTQTensors) -> np.ndarray:
    """The float32 ``[out, in]`` weight a GPTQ kernel computes with."""
    u = unpack_linear(t)
    g = u.g_idx.astype(np.int64)
    scales = u.scales.astype(np.float32)[:, g]
    zeros = u.zeros.astype(np.float32)[:, g]
    return (u.codes.astype(np.float32) - zeros) * scales


def validate_layout(found: Mapping[str, tuple[tuple[int, ...], np.dtype]], bits: int, group_size: int,
                    name: str) -> None:
    """Raise unless ``found`` (``qweight``/``qzeros``/``scales``/``g_idx`` -> shape, dtype) is one
    Linear in the classic v1 layout; ``group_size`` <= 0 means one group per row.

    Shapes and dtypes only, so a safetensors header can be checked without reading a tensor.
    """
    missing = [k for k in LINEAR_TENSORS if k not in found]
    if missing:
        raise InputError(f"{name} has no {', '.join(name + '.' + k for k in missing)}",
                         hint="the GPTQ checkpoint is incomplete; re-export it")
    k = _per_word(bits)
    qweight_shape, g_idx_shape = found["qweight"][0], found["g_idx"][0]
    out_features = qweight_shape[-1] if len(qweight_shape) == 2 else 0
    in_features = g_idx_shape[0] if len(g_idx_shape) == 1 else 0
    groups = in_features // group_size if group_size > 0 else 1
    want = {"qweight": ((in_features // k, out_features), np.dtype(np.int32)),
            "qzeros": ((groups, out_features // k), np.dtype(np.int32)),
            "scales": ((groups, out_features), np.dtype(np.float16)),
            "g_idx": ((in_features,), np.dtype(np.int32))}
    for attr, (shape, dtype) in want.items():
        got_shape, got_dtype = found[attr]
        if tuple(got_shape) != shape or got_dtype != dtype:
            raise InputError(f"{name}.{attr} has shape {tuple(got_shape)} {got_dtype}, expected {shape} {dtype}",
                             hint="the GPTQ checkpoint is not in the classic v1 layout")


def validate_shapes(t: GPTQTensors, group_size: int, name: str) -> None:
    """Raise if a checkpoint's tensors do not describe one Linear (layout, then g_idx's range)."""
    validate_layout({a: (getattr(t, a).shape, getattr(t, a).dtype) for a in LINEAR_TENSORS}, t.bits, group_size, name)
    groups = t.in_features // group_size if group_size > 0 else 1
    if int(t.g_idx.min(initial=0)) < 0 or int(t.g_idx.max(initial=0)) >= groups:
        raise InputError(f"{name}.g_idx points outside its {groups} groups", hint="the checkpoint is corrupt")
