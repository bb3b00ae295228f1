"""Reproducible benchmarks: ``edgekit bench`` (speed, memory, power, with the conditions
recorded), ``edgekit bench report`` (plots and a markdown summary) and ``edgekit eval``
(perplexity and KL divergence against a reference)."""

from __future__ import annotations

from .results import SCHEMA_VERSION, BenchResult, BenchResults, BenchSettings, load_results
from .run import run_bench

__all__ = ["SCHEMA_VERSION", "BenchResult", "BenchResults", "BenchSettings", "load_results", "run_bench"]
