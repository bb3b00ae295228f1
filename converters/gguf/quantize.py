"""In-process quantization with llama.cpp's own quantizer (llama_model_quantize)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from edgekit.errors import EdgekitError

from .quants import GGUFQuant


def quantize_file(src: Path, dst: Path, q: GGUFQuant, *, threads: int | None = None) -> None:
    """Quantize float GGUF ``src`` into ``dst`` with llama.cpp's rules for ``q`` (mixed types included)."""
    import llama_cpp

    from edgekit.runtimes.llama_env import route_llama_logs

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, q.ftype)
    params.nthread = threads or os.cpu_count() or 1
    route_llama_logs()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise EdgekitError(f"llama.cpp failed to quantize to {q.name} (code {rc})",
                           hint="run with -vv to see llama.cpp's log")
