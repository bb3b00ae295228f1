"""Progress reporting from library code without printing.

Long operations accept ``progress: ProgressFn | None`` and call it with events; the CLI
passes a printer, the Python API may pass anything (or nothing: events go to logging).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("edgekit")


@dataclass(frozen=True)
class ProgressEvent:
    step: str
    message: str = ""
    done: int = 0
    total: int = 0  # >0: a counter within the step


ProgressFn = Callable[[ProgressEvent], None]


def report(progress: ProgressFn | None, step: str, message: str = "", done: int = 0, total: int = 0) -> None:
    event = ProgressEvent(step, message, done, total)
    if progress is not None:
        progress(event)
    elif not total:
        log.info("%s%s", step, f": {message}" if message else "")


def duration_text(seconds: float) -> str:
    """12 s, 4 min 10 s, 2 h 05 min: how long, to the precision a person plans with."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def time_left(elapsed_s: float, done: int, total: int) -> str:
    """"about 4 min 10 s left" at the rate so far (empty before the first unit is done)."""
    if done <= 0 or total <= done:
        return ""
    return f"about {duration_text(elapsed_s / done * (total - done))} left"


@dataclass
class StepStats:
    name: str
    seconds: float = 0.0
    peak_rss_bytes: int = 0


@dataclass
class StepTimer:
    """Wall time and peak RSS per named step (RSS sampled every few ms by a thread)."""

    steps: list[StepStats] = field(default_factory=list)
    interval_s: float = 0.005

    @contextmanager
    def step(self, name: str) -> Iterator[StepStats]:
        import psutil

        proc = psutil.Process()
        stats = StepStats(name, peak_rss_bytes=proc.memory_info().rss)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval_s):
                stats.peak_rss_bytes = max(stats.peak_rss_bytes, proc.memory_info().rss)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.perf_counter()
        try:
            yield stats
        finally:
            stats.seconds = time.perf_counter() - t0
            stop.set()
            t.join()
            stats.peak_rss_bytes = max(stats.peak_rss_bytes, proc.memory_info().rss)
            self.steps.append(stats)

    def as_dict(self) -> list[dict[str, float | str | int]]:
        return [{"step": s.name, "seconds": round(s.seconds, 4), "peak_rss_bytes": s.peak_rss_bytes} for s in self.steps]
