"""Round-to-nearest (RTN): the baseline GPTQ has to beat, and the integer-code extractor.

The scheme is the one GPTQ runs with here: symmetric, one scale per (output row, group of
``group_size`` consecutive input columns), scale = ``max|w| / ((2**bits - 1) / 2)`` rounded
to float16 -- compressed-tensors' ``memoryless_minmax`` observer, which is what
llmcompressor's GPTQ uses for its scales. RTN and GPTQ therefore share every scale and
differ only in how each weight is rounded: RTN to the nearest level, GPTQ with the error
of earlier columns folded into later ones (Hessian from the calibration activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_F16_EPS = float(np.finfo(np.float16).eps)  # what compressed-tensors puts in place of a 0 scale


@dataclass
class QuantizedLinear:
    codes: np.ndarray  # [out, in] unsigned codes in [0, 2**bits)
    zeros: np.ndarray  # [out, groups] unsigned zero points (2**(bits-1): symmetric)
    scales: np.ndarray  # [out, groups] float16
    g_idx: np.ndarray  # [in] int32
    bits: int

    def dequantize(self) -> np.ndarray:
        g = self.g_idx.astype(np.int64)
        return (self.codes.astype(np.float32) - self.zeros.astype(np.float32)[:, g]) * \
            self.scales.astype(np.float32)[:, g]


def trivial_g_idx(in_features: int, group_size: int) -> np.ndarray:
    return (np.arange(in_features) // group_size).astype(np.int32)


def minmax_scales(w: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Symmetric per-group scales ``[out, groups]`` (float16 values held in float32)."""
    out_f, in_f = w.shape
    amax = np.abs(w.astype(np.float32).reshape(out_f, in_f // group_size, group_size)).max(axis=-1)
    scales = (amax / np.float32(((1 << bits) - 1) / 2)).astype(np.float16).astype(np.float32)
    return np.where(scales == 0, np.float32(_F16_EPS), scales)


def codes_for(w: np.ndarray, scales: np.ndarray, g_idx: np.ndarray, bits: int) -> np.ndarray:
    """Nearest symmetric codes of ``w`` on the given grid, offset to unsigned."""
    half = 1 << (bits - 1)
    s = scales.astype(np.float32)[:, g_idx.astype(np.int64)]
    q = np.clip(np.round(w.astype(np.float32) / s), -half, half - 1)
    return (q + half).astype(np.uint8)


def rtn_quantize(w: np.ndarray, bits: int, group_size: int) -> QuantizedLinear:
    g_idx = trivial_g_idx(w.shape[1], group_size)
    scales = minmax_scales(w, bits, group_size)
    zeros = np.full(scales.shape, 1 << (bits - 1), dtype=np.int64)
    return QuantizedLinear(codes_for(w, scales, g_idx, bits), zeros, scales.astype(np.float16), g_idx, bits)


def on_grid(w_q: np.ndarray, scales: np.ndarray, g_idx: np.ndarray, bits: int) -> QuantizedLinear:
    """Codes of weights that already lie on the grid (GPTQ's output), checked to be exact."""
    codes = codes_for(w_q, scales, g_idx, bits)
    zeros = np.full(scales.shape, 1 << (bits - 1), dtype=np.int64)
    ql = QuantizedLinear(codes, zeros, scales.astype(np.float16), g_idx.astype(np.int32), bits)
    err = float(np.abs(ql.dequantize() - w_q).max(initial=0.0))
    if err > 0:
        raise ValueError(f"quantized weights are off their grid by up to {err:.3g}")
    return ql
