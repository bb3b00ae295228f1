"""Benchmark and convert across a fleet of boards on Ray (``pip install "edgekit[fleet]"``).

Each board joins a Ray cluster with ``edgekit fleet join`` and advertises itself as one unit of
the custom resource ``edgekit-profile:<name>``; a benchmark job asks for one unit, so Ray runs
at most one benchmark per board at a time (benchmarks must not share a board) and any board of
the asked profile may take it. Ray's own GPU detection is never relied on (Jetson's NVML
reports no GPU). Ray is imported only inside the functions that use it.
"""

from __future__ import annotations
