"""Run ONNX Runtime GenAI's model builder in a child process.

A child process because the builder prints freely (library code must not), loads the
whole model through transformers (its memory is returned when it exits), and can be
stopped cleanly on Ctrl-C. Its output is parsed into progress events and kept for the
error message when it fails.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from edgekit.errors import DependencyError, EdgekitError
from edgekit.progress import ProgressFn, report
from edgekit.runtimes.onnx_check import ONNX_INSTALL

log = logging.getLogger(__name__)

# builder output line -> progress message (the rest goes to the debug log)
_PROGRESS = (
    (re.compile(r"^Reading (layer (\d+)|embedding layer|final norm|LM head)"), "reading"),
    (re.compile(r"^Saving ONNX model"), "saving ONNX model"),
    (re.compile(r"complete quantization of (/model/layers\.(\d+)/\S+|/lm_head/\S+)"), "quantizing"),
)


# The builder behind edgekit's config fixes (builder_main.py); tests swap in the raw
# builder to show what goes wrong without them.
BUILDER_MODULE = "edgekit.converters.onnx.builder_main"


class BuilderError(EdgekitError):
    """The ONNX builder failed; the message carries its last output lines."""


def check_builder_available() -> None:
    for module, package in (("onnxruntime_genai", "onnxruntime-genai"), ("onnx_ir", "onnx-ir"), ("onnx", "onnx")):
        if importlib.util.find_spec(module) is None:
            raise DependencyError(package, "ONNX export", ONNX_INSTALL)


def run_builder(src: Path, out: Path, *, precision: str, ep: str, cache_dir: Path,
                extra_options: dict[str, str], n_layers: int, progress: ProgressFn | None = None,
                label: str = "onnx") -> None:
    cmd = [sys.executable, "-m", BUILDER_MODULE, "-i", str(src), "-o", str(out),
           "-p", precision, "-e", ep, "-c", str(cache_dir)]
    opts = {"hf_token": "false", **extra_options}  # local directory only: never ask a hub
    cmd += ["--extra_options", *(f"{k}={v}" for k, v in opts.items())]
    log.debug("running %s", " ".join(cmd))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=15)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as proc:
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                if not line:
                    continue
                tail.append(line)
                log.debug("builder: %s", line)
                _forward(line, n_layers, progress, label)
            rc = proc.wait()
        except BaseException:  # Ctrl-C or an error here: don't leave the builder running
            proc.kill()
            raise
    if rc != 0:
        last = next((t for t in reversed(tail) if "Error" in t or "error" in t), tail[-1] if tail else "")
        raise BuilderError(f"ONNX Runtime GenAI's builder failed (exit {rc}): {last[:300]}",
                           hint="run with -vv to see its full output")


def _forward(line: str, n_layers: int, progress: ProgressFn | None, label: str) -> None:
    for pattern, what in _PROGRESS:
        m = pattern.search(line)
        if m is None:
            continue
        layer = next((g for g in m.groups()[1:] if g is not None), None)
        done = int(layer) + 1 if layer is not None else 0
        report(progress, label, f"{what} {m.group(1) if m.groups() else ''}".strip(), done,
               n_layers if layer is not None else 0)
        return
