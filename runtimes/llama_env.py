"""Process-wide llama.cpp setup: log routing and the AMX guard.

Logs: llama-cpp-python installs a callback that prints to stderr; library code must not
print, so we replace it once with one that logs to ``edgekit.llama_cpp``. llama.cpp is
chatty: its INFO goes to INFO (shown with -v), its DEBUG and ERROR lines to DEBUG (-vv;
a failing call raises edgekit's own error) and its WARN to WARNING -- except the
quantizer's per-tensor fallback warnings, which go to DEBUG: the quantizer reads the types
back from the file and warns once per artifact instead
(:func:`edgekit.converters.gguf.quantize.artifact_types`).

AMX: on Sapphire Rapids hosts llama.cpp (GGML_NATIVE builds) moves q4_0/q8_0/k-quant
weights into AMX "extra buffers"; in virtual machines seen here those kernels segfault on
the first matmul (f16/f32 and q5_0/q2_k, which skip AMX, run fine). We turn extra buffer
types off when llama.cpp reports AMX, at the cost of its weight repacking.
``EDGEKIT_LLAMA_EXTRA_BUFTS=1`` forces them on, ``=0`` off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

_log = logging.getLogger("edgekit.llama_cpp")
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.DEBUG, 5: logging.DEBUG}
# llama_model_quantize, per tensor: "warning: blk.0.attn_q.weight - ncols 576 not divisible by
# 256 (required for type q4_K)", "-> falling back to q5_0", then "N of M tensor(s) required
# fallback quantization"; with --tensor-type, "applying manual override: q2_K -> q8_0" per tensor
# (the manifest records the overrides and the types the file holds). Matched to pick a level
# only; nothing is counted from log text. Loading: "special_eot_id is not in special_eog_ids"
# is llama.cpp adding an end-of-turn id it does not know by name (a fine-tune's own marker,
# written on purpose by edgekit's converter, converters/stop_tokens.py): not a fault.
_FALLBACK_LINES = re.compile(r"not divisible by \d+|falling back to|required fallback quantization"
                             r"|applying manual override|special_eo[tm]_id is not in special_eog_ids")
_callback: Any = None  # keep a reference: ctypes would free the trampoline otherwise
_patch_lock = threading.Lock()


def route_llama_logs() -> None:
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lvl = _LEVELS.get(level, logging.DEBUG)
        if not _log.isEnabledFor(lvl):
            return
        line = text.decode("utf-8", errors="replace").rstrip()
        if lvl == logging.WARNING and _FALLBACK_LINES.search(line):
            lvl = logging.DEBUG
            if not _log.isEnabledFor(lvl):
                return
        _log.log(lvl, line)

    _callback = _cb
    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))


@lru_cache(maxsize=1)
def use_extra_buffer_types() -> bool:
    forced = os.environ.get("EDGEKIT_LLAMA_EXTRA_BUFTS")
    if forced in ("0", "1"):
        return forced == "1"
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return "AMX_INT8 = 1" not in info


@contextlib.contextmanager
def llama_load_params() -> Iterator[None]:
    """While a ``llama_cpp.Llama`` is constructed, apply edgekit's model-load settings.

    llama-cpp-python has no argument for ``use_extra_bufts``; it fills llama_model_params
    from ``llama_model_default_params()``, so we wrap that call for the construction.
    """
    route_llama_logs()
    if use_extra_buffer_types():
        yield
        return
    import llama_cpp.llama_cpp as C

    with _patch_lock:
        original = C.llama_model_default_params

        def patched() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        C.llama_model_default_params = patched
        try:
            yield
        finally:
            C.llama_model_default_params = original
