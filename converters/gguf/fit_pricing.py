"""Pricing for the fit (:mod:`.fit`): each (tensor class, type) -> its loss, and the cache.

``kl`` quantizes one class at a time and scores llama.cpp against the float file on the
calibration text; ``error`` quantizes the whole model once per type and takes each class's
imatrix-weighted relative output error. The prices are kept in ``OUT/fit-pricing.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgekit.fsutil import temp_path_for
from edgekit.progress import ProgressFn, report

from .fit import FIT_CTX, FitRequest, QuantizeFn, Unit, _is_float, _rank, _rung_quant, float_type
from .inspect import TensorRow, read_gguf


def _rows(path: Path, t: TensorRow, step: int = 4096) -> Iterator[np.ndarray]:
    """A tensor's float32 ggml rows, ``step`` at a time."""
    import mmap

    from .dequant import dequantize_rows

    n = math.prod(t.shape[1:])
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for lo in range(0, n, step):
            yield dequantize_rows(mm, t, lo, min(n, lo + step))


def measure_kl(units: list[Unit], base: Path, work: Path, quantize: QuantizeFn, calibration: str,
               request: FitRequest, threads: int | None, progress: ProgressFn | None) -> None:
    """``kl``: each (class, rung) quantized alone, the rest at F16, scored against the float file."""
    from edgekit.runtimes.llamacpp import LlamaCppSession
    from edgekit.runtimes.llamacpp_score import score_positions

    from ..quality import ReferenceScores, make_windows, score_artifact

    jobs = [(u, r) for u in units for r in u.rungs if not _is_float(r)]
    top = float_type([t for u in units for t in u.tensors])
    with LlamaCppSession(base, n_ctx=FIT_CTX, n_batch=FIT_CTX, n_threads=threads) as s:
        ids, head = s.tokenize(calibration, False), s.tokenize("", True)
        windows = make_windows(ids, head, n_ctx=min(FIT_CTX, s.context_length), eval_tokens=request.tokens,
                               source="calibration")
        vocab = int(s.llm.n_vocab())

        def base_score(toks: list[int], start: int) -> Iterator[np.ndarray]:
            return score_positions(s, toks, start)

        ref = ReferenceScores.collect(windows, base_score, vocab)
    report(progress, "fit", f"pricing {len(jobs)} (class, type) pairs on {windows.n_scored} calibration tokens")
    for i, (u, rung) in enumerate(jobs):
        tmp = temp_path_for(work / f"fit-probe-{i}.gguf")
        try:
            quantize(base, tmp, _rung_quant(rung), [(u.pattern, rung), (".", top)])
            with LlamaCppSession(tmp, n_ctx=FIT_CTX, n_batch=FIT_CTX, n_threads=threads) as s:
                def score(toks: list[int], start: int) -> Iterator[np.ndarray]:
                    return score_positions(s, toks, start)

                u.loss[rung] = max(0.0, score_artifact(ref, windows, score).mean_kl)
        finally:
            tmp.unlink(missing_ok=True)
        report(progress, "fit", f"{i + 1}/{len(jobs)}: {u.name} at {rung}: KL {u.loss[rung]:.4g}")


def measure_error(units: list[Unit], base: Path, work: Path, quantize: QuantizeFn,
                  imatrix: dict[str, np.ndarray] | None, progress: ProgressFn | None) -> None:
    """``error``: the whole model at each rung once; each class's imatrix-weighted relative error."""
    rungs = sorted({r for u in units for r in u.rungs if not _is_float(r)}, key=_rank)
    top = float_type([t for u in units for t in u.tensors])
    base_rows = {t.name: t for t in read_gguf(base).tensors}
    for k, rung in enumerate(rungs):
        tmp = temp_path_for(work / f"fit-probe-{rung}.gguf")
        try:
            todo = [u for u in units if rung in u.rungs]
            quantize(base, tmp, _rung_quant(rung), [(u.pattern, rung) for u in todo] + [(".", top)])
            q_rows = {t.name: t for t in read_gguf(tmp).tensors}
            for u in todo:
                err = sig = 0.0
                for t in u.tensors:
                    w = np.ones(t.shape[0], dtype=np.float64)
                    if imatrix is not None and t.name in imatrix and imatrix[t.name].size == t.shape[0]:
                        w = imatrix[t.name].astype(np.float64)
                    for ref_rows, q_rows_ in zip(_rows(base, base_rows[t.name]),
                                                 _rows(tmp, q_rows[t.name]), strict=True):
                        err += float(((q_rows_ - ref_rows) ** 2 @ w).sum())
                        sig += float((ref_rows.astype(np.float64) ** 2 @ w).sum())
                u.loss[rung] = err / max(sig, 1e-30)
        finally:
            tmp.unlink(missing_ok=True)
        report(progress, "fit", f"{k + 1}/{len(rungs)}: relative output error at {rung}")


PRICING_FILE = "fit-pricing.json"  # in the output directory: a second budget reuses the first's pricing


def pricing_key(base: Path, request: FitRequest, calibration: str, imatrix: dict[str, np.ndarray] | None) -> str:
    """What the losses depend on: the float model's bytes, the method, its text or its matrix."""
    import hashlib

    from edgekit.fsutil import sha256_file

    h = hashlib.sha256(f"{sha256_file(base)}|{request.method}|{request.tokens}|{FIT_CTX}".encode())
    if request.method == "kl":
        h.update(calibration.encode())
    if imatrix is not None:  # both methods quantize their probes with it
        for name in sorted(imatrix):
            h.update(name.encode())
            h.update(np.ascontiguousarray(imatrix[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def read_pricing(work: Path, key: str) -> dict[str, dict[str, float]] | None:
    import json

    try:
        data = json.loads((work / PRICING_FILE).read_text(encoding="utf-8"))
        entry = data.get(key) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None
    except (OSError, ValueError):
        return None  # no cache, or a damaged one: price again


def write_pricing(work: Path, key: str, units: list[Unit]) -> None:
    import json

    from edgekit.fsutil import write_json_atomic

    try:
        data = json.loads((work / PRICING_FILE).read_text(encoding="utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[key] = {u.name: u.loss for u in units}
    write_json_atomic(work / PRICING_FILE, data)


