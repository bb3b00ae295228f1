"""Runtimes: one module per inference engine, behind one Session API (:mod:`.base`)."""

from .base import GenerationResult, GenerationStats, SamplingConfig, Session
from .registry import ArtifactKind, detect, load

__all__ = ["ArtifactKind", "GenerationResult", "GenerationStats", "SamplingConfig", "Session", "detect", "load"]
