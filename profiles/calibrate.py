"""Measure this host's achievable memory bandwidth and matmul rate, in a few seconds.

Bandwidth: every core sums its slice of a float32 array much larger than the caches
(numpy's reductions release the GIL, so threads run in parallel); token generation is a
streaming read of the weights, so the read rate is the figure that matters. A copy rate
(read + write) is reported alongside. Matmul: float32 GEMM through numpy's BLAS, the
ceiling for prompt processing on the CPU. Read curve: the same read over working sets from
1 to 256 MiB, so the cost model can tell a model that streams from DRAM from one whose bytes
per token stay in a cache (reported cache sizes are not trusted: this VM reports a 480 MiB
L3, yet reads fall from 30 to 17 GB/s between 32 and 128 MiB). The curve reads with
``max`` (a SIMD reduction that is never the bottleneck: 90 GB/s in L2 on the dev host,
where numpy's float32 ``sum`` tops out at 23 GB/s on one core). Best of several repeats:
the question is what the hardware can do, not what a noisy neighbour left over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .detect import usable_cores
from .schema import DeviceClass, Figure, KernelTable, Origin, PowerMode, Profile, ReadCurve, SourceKind

log = logging.getLogger(__name__)

MAX_ARRAY_BYTES = 512 * 2**20  # well past any L3; capped by MemAvailable / 8 below
CURVE_MIB = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # working sets for the read curve
MATMUL_N = 2048  # 2 x 2048^3 = 17 GFLOP per product: long enough to time, short enough to repeat


@dataclass(frozen=True)
class Calibration:
    read_gbs: float  # all threads, streaming sum
    read_1t_gbs: float  # one thread
    copy_gbs: float  # all threads, read + write bytes counted
    matmul_gflops: float  # float32 GEMM
    threads: int
    array_mib: int
    seconds: float
    read_curve: tuple[tuple[float, float], ...] = ()  # (working set MiB, GB/s), best of 1 and all threads

    @property
    def bandwidth_gbs(self) -> float:
        """The best streaming read any thread count reached: what the memory can deliver."""
        return max(self.read_gbs, self.read_1t_gbs)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: round(v, 2) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        d["read_curve"] = [[mib, round(gbs, 2)] for mib, gbs in self.read_curve]
        return d


# What the repeats are timed with: wall time, or (one thread) the process's CPU time, which is
# what the work costs on an idle core however many other processes share the CPU (on a 2-core
# VM at load 20 wall time read 1.2 GB/s and 7 GFLOP/s where CPU time reads 15 GB/s and 60).
_clock: Callable[[], float] = time.perf_counter


def _best(fn: Callable[[], object], budget_s: float, min_reps: int = 3) -> float:
    """Fastest time of ``fn`` (on ``_clock``) over repeats that fit the budget (at least ``min_reps``)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < budget_s:
        t = _clock()
        fn()
        times.append(_clock() - t)
        if len(times) >= 50:
            break
    return min(times)


def _memory_rates(size: int, n_threads: int, share: float) -> tuple[float, float, float]:
    """(read all threads, read one thread, copy) in bytes/s over a ``size``-byte array."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ones(size // 4, dtype=np.float32)
    b = np.empty_like(a)
    chunks, out_chunks = np.array_split(a, n_threads), np.array_split(b, n_threads)
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(np.copyto, out_chunks, chunks))  # fault every page in and wake the threads
        read = a.nbytes / _best(lambda: list(pool.map(np.sum, chunks)), share)
        copy = 2 * a.nbytes / _best(lambda: list(pool.map(np.copyto, out_chunks, chunks)), share)
    read_1t = a.nbytes / _best(lambda: a.sum(), share / 2)
    return read, read_1t, copy


def _map_all(pool: Executor, fn: Callable[[Any], object], chunks: list[Any]) -> list[object]:
    """``fn`` over every chunk, waiting for all (``pool.map`` alone returns before they finish).

    A function bound with ``partial``, not a lambda: its caller times it inside a loop, where a
    lambda would close over the loop's variables (ruff B023)."""
    return list(pool.map(fn, chunks))


def _read_curve(n_threads: int, budget_s: float, max_bytes: int) -> tuple[tuple[float, float], ...]:
    """Read GB/s per working-set size (best of one thread and ``n_threads``), up to ``max_bytes``.

    Each size is read again and again, so after the first pass it sits in whatever cache
    level holds it: the rate a model of that many bytes per token is read at."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    sizes = [m for m in CURVE_MIB if m * 2**20 <= max_bytes]
    share = budget_s / max(1, len(sizes)) / 2
    points = []
    with ThreadPoolExecutor(n_threads) as pool:
        for mib in sizes:
            a = np.ones(mib * 2**20 // 4, dtype=np.float32)
            best = _best(a.max, share)
            if n_threads > 1:
                best = min(best, _best(partial(_map_all, pool, np.max, np.array_split(a, n_threads)), share))
            points.append((float(mib), a.nbytes / best / 1e9))
    return tuple(points)


def measure(budget_s: float = 4.0, threads: int | None = None, available_bytes: int | None = None) -> Calibration:
    """``threads=1`` times in process CPU time (numpy's BLAS must then run one thread:
    OPENBLAS_NUM_THREADS=1, as `edgekit profile calibrate --threads 1` sets before numpy loads)."""
    global _clock
    import numpy as np

    t0 = time.perf_counter()
    n_threads = threads or usable_cores()
    _clock = time.process_time if n_threads == 1 else time.perf_counter
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    size = max(64 * 2**20, min(MAX_ARRAY_BYTES, available_bytes // 8))
    share = budget_s / 5
    read, read_1t, copy = _memory_rates(size, n_threads, share)
    curve = _read_curve(n_threads, share, size // 2)
    x = np.random.default_rng(0).standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    x @ x  # BLAS thread start-up
    gflops = 2 * MATMUL_N**3 / _best(lambda: x @ x, share * 1.5) / 1e9
    cal = Calibration(read / 1e9, read_1t / 1e9, copy / 1e9, gflops, n_threads, size // 2**20,
                      time.perf_counter() - t0, curve)
    log.info("calibration: %s", cal)
    return cal


def calibrated_profile(base: Profile, cal: Calibration, kernels: KernelTable | None = None) -> Profile:
    """``base`` (usually the detected host) with the measured figures in place; ``kernels``: the
    host's llama.cpp kernel rates (:func:`.kernels.measure_kernels`), which the cost model then
    uses instead of its shares fitted on another CPU.

    The numpy read rate is the CPU's view of memory: it replaces the bandwidth of CPU-class
    hosts only. On a Jetson or a GPU host it is kept as a note, since the accelerator reaches
    a different rate (its own memory, or the shared DRAM through a wider path)."""
    ref = f"numpy streaming read, best of 1 and {cal.threads} threads, {cal.array_mib} MiB array"
    measured_bw = Figure(round(cal.bandwidth_gbs, 2), SourceKind.MEASURED, ref)
    gflops = Figure(round(cal.matmul_gflops, 1), SourceKind.MEASURED, "numpy float32 GEMM 2048^3")
    notes = f"Calibrated: CPU read {cal.read_gbs:.1f} GB/s, copy {cal.copy_gbs:.1f} GB/s, " \
            f"matmul {cal.matmul_gflops:.0f} GFLOP/s."
    modes = base.power_modes
    curve = None
    if len(cal.read_curve) >= 2:
        curve = ReadCurve(tuple((mib, round(gbs, 2)) for mib, gbs in cal.read_curve), SourceKind.MEASURED,
                          f"numpy max over each working set, best of 1 and {cal.threads} threads")
    if base.device_class in (DeviceClass.X86_CPU, DeviceClass.ARM_CPU):
        modes = tuple(PowerMode(m.name, measured_bw, m.power_w, m.emc_mhz, m.note) if m.name == base.default_mode
                      else m for m in base.power_modes)
    else:
        notes += " The accelerator's bandwidth is the profile's figure, not this CPU measurement."
    if kernels is not None:
        notes += f" llama.cpp kernels measured for {len(kernels.types)} weight types ({kernels.threads} thread(s))."
    return replace(base, power_modes=modes, compute=replace(base.compute, cpu_gflops=gflops),
                   origin=Origin.CALIBRATED, notes=notes, read_curve=curve, kernels=kernels,
                   display_name=base.display_name.replace("This host", "This host, calibrated"))


def calibrate(name: str = "host", root: Path = Path("/"), budget_s: float = 4.0, *, kernels: bool = True,
              quick: bool = False, threads: int | None = None) -> tuple[Profile, Calibration]:
    """Detect this host, measure it, and return the calibrated profile (not yet saved).

    ``kernels``: also time llama.cpp's kernel for every weight type (about 5 s a type; ``quick``:
    two types at two sizes, a few seconds in all). ``threads``: for every measurement (default:
    all usable cores)."""
    from .detect import detect_host
    from .kernels import measure_kernels, quick_settings

    cal = measure(budget_s, threads=threads)
    table = None
    if kernels:
        table = measure_kernels(threads=threads or usable_cores(), **(quick_settings() if quick else {}))
    return calibrated_profile(detect_host(root, name=name), cal, table), cal
