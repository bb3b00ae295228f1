"""What Ray itself costs a board: resident memory and CPU of the node's Ray processes.

A benchmark result should say what shared the board with it. On a board Ray runs a raylet
and, under it, its agents and worker processes (one of them hosts the job, which starts the
bench worker in a fresh process of its own). This module finds them as the raylet and its
descendants -- the job's own children (the benchmark) excluded -- and samples their summed
RSS and CPU time. The head's GCS is not counted: boards are usually worker nodes.
"""

from __future__ import annotations

import os
import time
from typing import Any

METHOD = ("raylet and its descendants (agents, workers; the benchmark process excluded): summed RSS, "
          "CPU time over the window / wall time (100 = one core)")


def _raylet() -> Any:
    import psutil

    p: Any = psutil.Process()
    while p is not None:
        try:
            if p.name() == "raylet":
                return p
            p = p.parent()
        except psutil.Error:
            return None
    return None


def node_processes(exclude_children_of_self: bool = True) -> list[Any]:
    """This node's Ray processes (empty outside a Ray worker)."""
    import psutil

    raylet = _raylet()
    if raylet is None:
        return []
    try:
        procs = [raylet, *raylet.children(recursive=True)]
    except psutil.Error:
        return []
    if exclude_children_of_self:
        try:
            mine = {c.pid for c in psutil.Process().children(recursive=True)}
        except psutil.Error:
            mine = set()
        procs = [p for p in procs if p.pid not in mine]
    return procs


def _totals(procs: list[Any]) -> tuple[int, float, int]:
    """(summed RSS bytes, summed CPU seconds, processes still alive)."""
    import psutil

    rss, cpu, alive = 0, 0.0, 0
    for p in procs:
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            alive += 1
        except psutil.Error:
            continue
    return rss, cpu, alive


def sample(window_s: float = 0.5) -> dict[str, Any] | None:
    """RSS and CPU of this node's Ray processes over ``window_s`` (None outside Ray)."""
    procs = node_processes()
    if not procs:
        return None
    _, cpu0, _ = _totals(procs)
    t0 = time.monotonic()
    time.sleep(window_s)
    rss, cpu1, alive = _totals(procs)
    wall = time.monotonic() - t0
    return {"rss_bytes": rss, "cpu_percent": round(100 * max(0.0, cpu1 - cpu0) / wall, 2), "processes": alive,
            "window_s": round(wall, 3), "cores": os.cpu_count(), "method": METHOD}


class DuringRun:
    """CPU and peak RSS of the Ray processes while the benchmark runs (started before, read after)."""

    def __init__(self) -> None:
        self.procs = node_processes()
        _, self.cpu0, _ = _totals(self.procs)
        self.t0 = time.monotonic()

    def result(self) -> dict[str, Any] | None:
        if not self.procs:
            return None
        rss, cpu1, alive = _totals(self.procs)
        wall = max(1e-9, time.monotonic() - self.t0)
        return {"rss_bytes": rss, "cpu_percent": round(100 * max(0.0, cpu1 - self.cpu0) / wall, 2),
                "processes": alive, "window_s": round(wall, 3)}
