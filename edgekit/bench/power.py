"""Jetson power from ``tegrastats``: a parser for its line formats and a background sampler.

tegrastats prints one line per interval. Power rails appear as ``NAME cur/avg`` with a
``mW`` unit on JetPack 5+ (Orin, Thor) and without one on JetPack 4 (Nano, TX2, Xavier):

    ... VDD_IN 4868mW/4868mW VDD_CPU_GPU_CV 521mW/521mW VDD_SOC 1433mW/1433mW     (Orin Nano/NX)
    ... POM_5V_IN 2013/2013 POM_5V_GPU 0/0 POM_5V_CPU 361/361                      (Nano, JetPack 4)
    ... GPU 0/0 CPU 313/313 SOC 1100/1100 CV 0/0 VDDRQ 313/313 SYS5V 1566/1566      (AGX Xavier)

The board's input power is the rail in :data:`TOTAL_RAILS` when present (the module's
input, as jtop reports it); boards without one (AGX Xavier, AGX Orin) report the sum of
their rails, which is what jtop shows as "total" there too. Energy per token is the mean
power over a phase times the phase's time, over its tokens.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Input-power rails, most specific first: whichever a board reports is its total.
TOTAL_RAILS = ("VDD_IN", "VIN", "POM_5V_IN", "VIN_SYS_5V0_TOTAL")
# NAME cur[mW]/avg[mW]; the negative lookahead keeps "RAM 3162/7620MB" and "SWAP 0/3810MB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(mW)?(?![\dA-Za-z])")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB", "EMC_FREQ", "GR3D_FREQ", "APE", "MTS"}
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?[\d.]+)C\b")


@dataclass(frozen=True)
class TegraSample:
    t: float  # time.monotonic() when read (0 for parsed text)
    rails_mw: dict[str, int]  # instantaneous power per rail
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    gpu_util_pct: int | None = None
    cpu_util_pct: float | None = None  # mean over online cores
    temps_c: dict[str, float] = field(default_factory=dict)

    @property
    def total_mw(self) -> int | None:
        for rail in TOTAL_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail]
        return sum(self.rails_mw.values()) if self.rails_mw else None

    @property
    def total_source(self) -> str:
        return next((r for r in TOTAL_RAILS if r in self.rails_mw), "sum of rails")


def parse_line(line: str, t: float = 0.0) -> TegraSample | None:
    """One tegrastats line; None when it carries no power or memory figure (a header, noise)."""
    rails: dict[str, int] = {}
    for m in _RAIL.finditer(line):
        name = m.group(1)
        if name in _NOT_RAILS:
            continue
        rails[name] = int(m.group(2))
    ram = _RAM.search(line)
    if not rails and not ram:
        return None
    gpu = _GPU.search(line)
    cpu = _CPU.search(line)
    cpu_util = None
    if cpu:
        loads = [int(x.split("%")[0]) for x in cpu.group(1).split(",") if "%" in x]  # "off" cores are skipped
        cpu_util = sum(loads) / len(loads) if loads else None
    # temperatures: "cpu@47.531C"; the CPU list's "2%@729" has no C suffix
    temps = {m.group(1): float(m.group(2)) for m in _TEMP.finditer(line)}
    return TegraSample(t, rails, int(ram.group(1)) if ram else None, int(ram.group(2)) if ram else None,
                       int(gpu.group(1)) if gpu else None, cpu_util, temps)


def _mean_w(samples: Iterable[TegraSample]) -> tuple[float | None, int]:
    """Mean total power (W) of the samples that report one, and how many do; (None, 0) if none."""
    mw = [v for s in samples if (v := s.total_mw) is not None]
    return (sum(mw) / len(mw) / 1000.0 if mw else None), len(mw)


def mean_power_w(samples: Sequence[TegraSample], windows: Sequence[tuple[float, float]]) -> tuple[float | None, int]:
    """Mean total power (W) of the samples taken inside any of ``windows``; (None, 0) if none fell inside."""
    return _mean_w(s for s in samples if any(a <= s.t <= b for a, b in windows))


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps its parsed samples.

    ``command`` is the tegrastats executable (found on PATH by default); ``available()``
    says whether there is one, so callers on non-Jetson hosts simply skip power.
    """

    def __init__(self, interval_ms: int = 100, command: str | None = None) -> None:
        self.interval_ms = interval_ms
        self.command = command or shutil.which("tegrastats")
        self.samples: list[TegraSample] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        return self.command is not None

    def __enter__(self) -> TegrastatsSampler:
        if self.command is None:
            return self
        try:
            self._proc = subprocess.Popen([self.command, "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as e:
            log.warning("could not start %s: %s; power is not measured", self.command, e)
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            s = parse_line(line, time.monotonic())
            if s is not None:
                self.samples.append(s)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_for_samples(self, n: int = 1, timeout_s: float = 3.0) -> bool:
        """Block until ``n`` samples arrived (so a phase has a baseline before it starts)."""
        end = time.monotonic() + timeout_s
        while len(self.samples) < n and time.monotonic() < end:
            time.sleep(0.01)
        return len(self.samples) >= n


def phase_power(samples: Sequence[TegraSample], windows: Sequence[tuple[float, float]], seconds: float,
                tokens: int) -> dict[str, float | int | str | None]:
    """Mean watts over a phase and joules per token; falls back to the whole run's mean when the
    phase was shorter than the sampling interval (tiny models), and says so."""
    watts, n = mean_power_w(samples, windows)
    source = "phase"
    if watts is None:
        (watts, n), source = _mean_w(samples), "run-average"
    return {"w": None if watts is None else round(watts, 3), "samples": n, "source": source,
            "j_per_token": None if watts is None or not tokens else round(watts * seconds / tokens, 6)}
