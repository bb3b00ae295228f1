"""The measuring process: one artifact, one thread count, in a fresh interpreter.

A fresh process per artifact makes the peak RSS honest (VmHWM of a process that loaded
only this model; not ``ru_maxrss``, which Linux carries across exec from the parent).
It reads a JSON spec as one line on stdin (kept open: EOF means the parent is gone, and the
worker ends with it) and reports events on stdout, one JSON object per line
behind :data:`EVENT_PREFIX` (anything else a native library prints is ignored), so the
parent sees each repetition as soon as it is measured and keeps it if the run is cut.

Measurement follows llama-bench: ``ppN`` processes an N-token prompt from an empty
context, ``tgM`` decodes M tokens one at a time from a one-token prompt, end-of-generation
ignored; both go through the public Session API (what users get, Python overhead
included). The KV cache is dropped before each test so a repeated prompt is not served
from its cached prefix.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@edgekit-bench "


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def vm_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc; ru_maxrss elsewhere (bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class GpuMemorySampler:
    """Peak GPU memory of this process through NVML (nvidia-ml-py), sampled every 20 ms.

    Falls back to the device's used-memory growth since the start when the driver does not
    list per-process usage (Jetson's integrated GPU has no NVML at all: nothing is recorded)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak: int | None = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMemorySampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self._base_used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:  # no NVML library, no driver, no GPU: GPU memory is not measured
            return self
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        nv, h = self._nvml, self._handle
        try:
            procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
            mine = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory]
            if mine:
                value, self.method = int(sum(mine)), "NVML per-process"
            else:
                value = max(0, int(nv.nvmlDeviceGetMemoryInfo(h).used) - self._base_used)
                self.method = self.method or "NVML device used minus baseline"
        except Exception:
            return
        self.peak = max(self.peak or 0, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._sample()
        self._stop.set()
        self._thread.join()
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def prompt_ids(session: Any, n: int, text: str) -> list[int]:
    """N tokens of real text (repeated as needed) after the model's own BOS, if it adds one."""
    head = session.tokenize("", add_special=True)
    body = session.tokenize(text, add_special=False) or [head[-1] if head else 0]
    ids = list(head)
    while len(ids) < n:
        ids += body
    return ids[:n]


def measure(spec: dict[str, Any]) -> None:
    import edgekit

    from .power import TegrastatsSampler, phase_power

    pp_n, tg_n = int(spec["prompt_tokens"]), int(spec["gen_tokens"])
    emit("start", baseline_rss_bytes=vm_bytes("VmRSS"))
    options: dict[str, Any] = {"n_ctx": int(spec["n_ctx"]), "n_threads": int(spec["threads"])}
    if spec["device"] != "cpu":
        options["device"] = spec["device"]
    with GpuMemorySampler() as gpu, TegrastatsSampler(command=spec.get("tegrastats")) as power:
        session = edgekit.load(spec["path"], **options)
        text = Path(spec["text"]).read_text(encoding="utf-8")
        pp_ids = prompt_ids(session, pp_n, text)
        tg_prompt = pp_ids[:1]
        # the load's own peak apart from the run's: a transient at load (it was gguf-py parsing a
        # 262k-token vocabulary: twice the loaded size) is otherwise indistinguishable
        emit("loaded", backend=session.backend, n_ctx=session.context_length, loaded_rss_bytes=vm_bytes("VmRSS"),
             load_peak_rss_bytes=vm_bytes("VmHWM"))
        if power.available():
            power.wait_for_samples(1)
        pp_windows: list[tuple[float, float]] = []
        tg_windows: list[tuple[float, float]] = []
        pp_total = tg_total = 0.0
        reps = 0
        for i in range(int(spec["warmup"]) + int(spec["repetitions"])):
            warm = i < int(spec["warmup"])
            session.reset()
            a = time.monotonic()
            for _ in session.stream(pp_ids, max_tokens=1, ignore_eos=True):
                pass
            b = time.monotonic()
            pp = session.last_stats
            session.reset()
            for _ in session.stream(tg_prompt, max_tokens=tg_n + 1, ignore_eos=True):
                pass
            c = time.monotonic()
            tg = session.last_stats
            if tg.completion_tokens != tg_n + 1:
                raise RuntimeError(f"the runtime generated {tg.completion_tokens} tokens, asked for {tg_n + 1}")
            gen_s = tg.total_s - tg.time_to_first_token_s
            if warm:
                continue
            pp_windows.append((a, b))
            tg_windows.append((b, c))
            pp_total += pp.time_to_first_token_s
            tg_total += gen_s
            reps += 1
            emit("rep", index=reps, prompt_tokens_per_s=pp_n / pp.time_to_first_token_s,
                 gen_tokens_per_s=tg_n / gen_s, ttft_s=pp.time_to_first_token_s,
                 prompt_s=pp.time_to_first_token_s, gen_s=gen_s)
        session.close()
    power_info = None
    if power.available():
        pp_p = phase_power(power.samples, pp_windows, pp_total, pp_n * reps)
        tg_p = phase_power(power.samples, tg_windows, tg_total, tg_n * reps)
        rails = power.samples[-1].total_source if power.samples else None
        power_info = {"source": "tegrastats", "total_rail": rails, "samples": len(power.samples),
                      "prompt_w": pp_p["w"], "prompt_j_per_token": pp_p["j_per_token"], "prompt_basis": pp_p["source"],
                      "gen_w": tg_p["w"], "gen_j_per_token": tg_p["j_per_token"], "gen_basis": tg_p["source"]}
    emit("done", peak_rss_bytes=vm_bytes("VmHWM"), gpu_memory_bytes=gpu.peak, gpu_memory_method=gpu.method or None,
         power=power_info)


def exit_with_parent() -> None:
    """End this process, and the group it leads (a tegrastats it started), when the parent goes.

    The parent keeps this process's stdin open while it waits for it, so EOF means the parent
    exited -- SIGKILL, SIGTERM, its terminal closed -- and nobody reads the results any more.
    In a process group of its own this worker would otherwise run on until its next write
    failed, a whole repetition later (minutes on a large model)."""
    def watch() -> None:
        sys.stdin.read()  # returns at EOF only
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():  # never the parent's group
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main() -> int:
    from edgekit.errors import EdgekitError

    try:
        spec = json.loads(sys.stdin.readline())  # one line; stdin then stays open (exit_with_parent)
        exit_with_parent()
        measure(spec)
    except KeyboardInterrupt:
        return 130
    except EdgekitError as e:
        emit("error", message=e.one_line())
        return 1
    except Exception as e:  # the parent records it as a failed result and goes on
        emit("error", message=f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
