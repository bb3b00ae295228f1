"""Measure llama.cpp's CPU kernels on this host, one weight type at a time (`profile calibrate`).

For each ggml type a synthetic Llama whose every matrix is that type is run through llama.cpp
(the same load settings as edgekit's runtime): batch-1 decode steps at a few working-set sizes
(a model of a few MiB that sits in the caches, up to one that streams from DRAM) and one prompt
of ``PROMPT`` tokens on the small model. The weights are real llama.cpp quantizations: a few
rows per row length are quantized once by llama_model_quantize (an importance matrix of ones
where the type needs one; its values do not change the kernel's speed) and the quantized rows
are tiled into the larger models, so even the slow i-quant quantizers cost well under a second.

What is stored (:class:`.schema.KernelTable`): per type, the rate at which a decode step reads
that type's weights (GB/s) at each working set, and the prompt kernel's GFLOP/s. The cost model
(:func:`.costs.estimate`) uses these instead of its datasheet shares when a profile has them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import KernelRate, KernelTable, SourceKind

log = logging.getLogger(__name__)

# Every type edgekit's quant table can put in a file (converters/gguf/quants.py TENSOR_TYPES).
ALL_TYPES = ("F16", "BF16", "F32", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K",
             "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
QUICK_TYPES = ("F16", "Q4_K")
# Working sets (MiB of weights read per token) for the decode points; the first is the small
# model (its size is whatever one layer of the small shape is in the type), the others are
# targets reached with more layers of the large shape. This host's caches end near 32 MiB and
# DRAM rates settle by 256 MiB (the read curve), which the points bracket.
SIZES_MIB = (0.0, 48.0, 256.0)
QUICK_SIZES_MIB = (0.0, 16.0)
PROMPT = 256  # tokens of the prompt measurement (a llama.cpp ubatch of 512 holds it in one pass)
DECODE_STEPS = 8


@dataclass(frozen=True)
class Shape:
    hidden: int
    ff: int
    heads: int
    kv_heads: int
    head_dim: int = 64
    vocab: int = 256

    def matrices(self, layers: int) -> list[tuple[str, int, int]]:
        """(GGUF name, row length ne0, rows) of every matrix."""
        h, f, kv = self.hidden, self.ff, self.kv_heads * self.head_dim
        out = [("token_embd.weight", h, self.vocab), ("output.weight", h, self.vocab)]
        for i in range(layers):
            b = f"blk.{i}."
            out += [(b + "attn_q.weight", h, h), (b + "attn_k.weight", h, kv), (b + "attn_v.weight", h, kv),
                    (b + "attn_output.weight", h, h), (b + "ffn_gate.weight", h, f), (b + "ffn_up.weight", h, f),
                    (b + "ffn_down.weight", f, h)]
        return out


# Row lengths are multiples of 256 (every type's block) and differ from each other.
SMALL = Shape(hidden=512, ff=1536, heads=8, kv_heads=2)
LARGE = Shape(hidden=1024, ff=3072, heads=16, kv_heads=4)
SEED_ROWS = 64
SMALL_LAYERS = 2  # the prompt's last layer runs its FFN for one token: a second layer runs it for all


def _row_bytes(type_name: str, ne0: int) -> int:
    import gguf

    blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return ne0 // blk * size


def _write_model(path: Path, shape: Shape, layers: int, rows_of: Callable[[int, int], Any], type_name: str) -> None:
    """A Llama GGUF whose matrices are ``type_name`` (bytes from ``rows_of(ne0, rows)``), norms F32."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_vocab_size(shape.vocab)
    w.add_file_type(1)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(shape.vocab - 3)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * shape.vocab)
    w.add_token_types([2, 3, 3] + [1] * (shape.vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    qtype = gguf.GGMLQuantizationType[type_name]
    norm = np.ones(shape.hidden, dtype=np.float32)
    w.add_tensor("output_norm.weight", norm)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
    for name, ne0, rows in shape.matrices(layers):
        w.add_tensor(name, rows_of(ne0, rows), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _seed_rows(work: Path, type_name: str, threads: int) -> dict[int, Any]:
    """``SEED_ROWS`` quantized rows per row length, made by llama.cpp: ne0 -> uint8 (rows, row bytes)."""
    import gguf
    import numpy as np

    from edgekit.converters.gguf.quantize import quantize_file
    from edgekit.converters.gguf.quants import quant

    from .llama_types import IMATRIX_TYPES

    lengths = sorted({ne0 for s in (SMALL, LARGE) for _, ne0, _ in s.matrices(1)})
    src, dst = work / "seed-f16.gguf", work / f"seed-{type_name}.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_embedding_length(LARGE.hidden)
    w.add_block_count(len(lengths))
    w.add_head_count(LARGE.heads)
    w.add_head_count_kv(LARGE.kv_heads)
    w.add_feed_forward_length(LARGE.ff)
    w.add_context_length(4096)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    rng = np.random.default_rng(0)
    names = {}
    for i, ne0 in enumerate(lengths):
        names[ne0] = f"blk.{i}.ffn_up.weight"
        w.add_tensor(names[ne0], (rng.standard_normal((SEED_ROWS, ne0), dtype=np.float32) * 0.02).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ones = {n: np.ones(ne0, np.float32) for ne0, n in names.items()} if type_name in IMATRIX_TYPES else None
    quantize_file(src, dst, quant("q8_0"), threads=threads, imatrix=ones, tensor_types=[(".*", type_name)])
    reader = gguf.GGUFReader(str(dst))
    got = {t.name: np.array(t.data).view(np.uint8).reshape(SEED_ROWS, -1) for t in reader.tensors}
    del reader
    src.unlink()
    dst.unlink()
    return {ne0: got[name] for ne0, name in names.items()}


def _tiler(seeds: dict[int, Any]) -> Callable[[int, int], Any]:
    import numpy as np

    def rows_of(ne0: int, rows: int) -> Any:
        seed = seeds[ne0]
        reps = -(-rows // seed.shape[0])
        return np.ascontiguousarray(np.tile(seed, (reps, 1))[:rows])

    return rows_of


def step_clock(threads: int) -> Callable[[], float]:
    """The clock a measurement reads: with one thread llama.cpp computes in the calling thread, whose
    CPU time is what the step costs however many other processes share the cores (wall time on a
    loaded 2-core host runs 2-6x longer, the more the longer the step); with more threads, wall time."""
    return time.thread_time if threads == 1 else time.perf_counter


def _timings(path: Path, threads: int, prompt: int | None, steps: int) -> tuple[float, float | None]:
    """(best seconds per decode step, best seconds for the prompt) of the GGUF at ``path``."""
    import llama_cpp

    from edgekit.runtimes.llama_env import llama_load_params, route_llama_logs

    route_llama_logs()
    with llama_load_params():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    clock = step_clock(threads)
    try:
        prompt_s = None
        if prompt:
            ids = [3 + i % 250 for i in range(prompt)]
            runs = []
            for _ in range(3):
                llm.reset()
                t = clock()
                llm.eval(ids)
                runs.append(clock() - t)
            prompt_s = min(runs)
        llm.reset()
        llm.eval([1])
        steps_s = []
        for i in range(steps + 1):
            t = clock()
            llm.eval([3 + i])
            steps_s.append(clock() - t)
        # the mean step, as a generation's tokens/s is (the best step ran 10-20% faster than the mean
        # on a shared host); the first step after the prompt warms the decode graph
        return sum(steps_s[1:]) / steps, prompt_s
    finally:
        llm.close()


# A Llama of layers too small to cost anything but their fixed work (norms, rope, softmax, graph
# nodes): its decode step at 1 and TINY_LAYERS layers gives the fixed cost per layer.
TINY = Shape(hidden=64, ff=128, heads=1, kv_heads=1)
TINY_LAYERS = 33


def measure_layer_s(work: Path, threads: int, steps: int = 16) -> float:
    """Seconds of fixed cost per layer per decode step, on this host (F16 matrices of 64 x 128)."""
    import numpy as np

    def rows_of(ne0: int, rows: int) -> Any:
        a = (np.random.default_rng(0).standard_normal((rows, ne0), dtype=np.float32) * 0.02).astype(np.float16)
        return a.view(np.uint8)

    times = []
    for layers in (1, TINY_LAYERS):
        path = work / f"tiny-{layers}.gguf"
        _write_model(path, TINY, layers, rows_of, "F16")
        try:
            times.append(_timings(path, threads, None, steps)[0])
        finally:
            path.unlink()
    return max(0.0, (times[1] - times[0]) / (TINY_LAYERS - 1))


def measure_type(type_name: str, work: Path, *, threads: int = 1, sizes_mib: Sequence[float] = SIZES_MIB,
                 prompt: int = PROMPT, steps: int = DECODE_STEPS, layer_s: float = 0.0) -> KernelRate:
    """One type's decode rate at each working set and its prompt rate, on this host (``layer_s``:
    the fixed cost per layer, taken off each decode step; the cost model adds it back)."""
    rows_of = _tiler(_seed_rows(work, type_name, threads))
    points: list[tuple[float, float]] = []
    for target in sizes_mib:
        shape = SMALL if target <= 0 else LARGE
        one = sum(rows * _row_bytes(type_name, ne0) for name, ne0, rows in shape.matrices(1) if name.startswith("blk."))
        layers = SMALL_LAYERS if target <= 0 else max(1, round(target * 2**20 / one))
        matrices = [m for m in shape.matrices(layers) if m[0] != "token_embd.weight"]  # the lookup reads one row
        read = sum(rows * _row_bytes(type_name, ne0) for _, ne0, rows in matrices)
        path = work / f"k-{type_name}-{layers}.gguf"
        _write_model(path, shape, layers, rows_of, type_name)
        try:
            step_s, _ = _timings(path, threads, None, steps)
        finally:
            path.unlink()
        step_s = max(step_s - layers * layer_s, step_s / 4)  # the per-layer fixed cost the cost model adds back
        points.append((round(read / 2**20, 3), round(read / step_s / 1e9, 3)))
        log.info("kernel %s: %.1f MiB, %d layers: decode %.2f GB/s", type_name, read / 2**20, layers,
                 read / step_s / 1e9)
    # the prompt on the wide shape, two layers (the last layer's FFN runs for the last token only:
    # llama.cpp keeps only the tokens it returns logits for after the last attention, as does the
    # LM head), at two lengths: matmuls grow with the prompt, attention with its square, so the
    # two timings separate the kernel from attention with no attention model (which, fitted on
    # another CPU, had shifted the figure by a third)
    layers = SMALL_LAYERS
    path = work / f"k-{type_name}-prompt.gguf"
    _write_model(path, LARGE, layers, rows_of, type_name)
    lengths = (max(16, prompt // 4), prompt)
    try:
        times = [_timings(path, threads, n, 1)[1] for n in lengths]
    finally:
        path.unlink()
    once = ("output.weight", f"blk.{layers - 1}.ffn_")
    mats = [(name, ne0 * rows) for name, ne0, rows in LARGE.matrices(layers) if name != "token_embd.weight"]
    flops = [2 * sum(n * (1 if name.startswith(once) else p) for name, n in mats) for p in lengths]
    # t = flop / rate + b * p^2: two equations in (1 / rate, b)
    (f1, f2), (p1, p2) = flops, lengths
    t1, t2 = (t or 0.0 for t in times)
    inv_rate = (t1 * p2**2 - t2 * p1**2) / (f1 * p2**2 - f2 * p1**2)
    if inv_rate <= 0:  # noise swamped the difference: the longer prompt, attention included
        inv_rate = t2 / f2
    prompt_gflops = 1 / inv_rate / 1e9
    log.info("kernel %s: prompt %.1f GFLOP/s (%s tokens: %s s)", type_name, prompt_gflops, lengths, times)
    points.sort()
    return KernelRate(tuple(points), round(prompt_gflops, 2))


def quick_settings() -> dict[str, Any]:
    """``measure_kernels`` keywords for ``--quick``: two types, two sizes, a short prompt."""
    return {"types": QUICK_TYPES, "sizes_mib": QUICK_SIZES_MIB, "prompt": 64, "steps": 4}


def measure_kernels(types: Sequence[str] = ALL_TYPES, *, threads: int = 1, sizes_mib: Sequence[float] = SIZES_MIB,
                    prompt: int = PROMPT, steps: int = DECODE_STEPS,
                    progress: Callable[[str], None] | None = None) -> KernelTable:
    """Every type in ``types``, measured; the table a calibrated profile stores."""
    from edgekit.errors import InputError

    unknown = [t for t in types if t.upper() not in ALL_TYPES]
    if unknown:
        raise InputError(f"unknown ggml weight type {unknown[0]!r}",
                         hint=f"--kernel-types / kernel_types= takes ggml type names: {', '.join(ALL_TYPES)}")
    t0 = time.perf_counter()
    rates: dict[str, KernelRate] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-kernels-") as tmp:
        layer_s = measure_layer_s(Path(tmp), threads)
        log.info("kernel fixed cost: %.1f us per layer per decode step", layer_s * 1e6)
        for t in types:
            if progress:
                progress(t.upper())
            rates[t.upper()] = measure_type(t.upper(), Path(tmp), threads=threads, sizes_mib=sizes_mib, prompt=prompt,
                                            steps=steps, layer_s=layer_s)
    clock = "CPU time" if threads == 1 else "wall time"
    ref = (f"llama.cpp on synthetic models of each type, {threads} thread{'s' if threads > 1 else ''} ({clock}), "
           f"decode at {len(sizes_mib)} working sets, prompt {prompt} tokens ({time.perf_counter() - t0:.0f} s)")
    return KernelTable(rates, threads, SourceKind.MEASURED, ref, round(layer_s * 1e6, 2))
