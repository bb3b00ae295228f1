"""``edgekit bench``: every artifact, warm-up then repetitions, each in its own process.

The parent resolves and checks every artifact before measuring anything (a typo in the
fifth path should not cost four benchmarks), records the conditions, then runs
:mod:`.worker` once per (artifact, thread count) and saves the results file after every
repetition -- atomically -- so Ctrl-C, or even a kill, leaves what was measured on disk.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgekit.errors import InputError
from edgekit.fsutil import artifact_digest
from edgekit.profiles.detect import usable_cores
from edgekit.progress import ProgressFn, report

from .conditions import host_conditions, now_utc, result_conditions
from .results import BenchResult, BenchResults, BenchSettings, Repetition, Stat, Status
from .worker import EVENT_PREFIX

if TYPE_CHECKING:
    from edgekit.runtimes.registry import ArtifactKind

log = logging.getLogger(__name__)

STDERR_TAIL = 800  # bytes of a failed worker's stderr kept to find its last line
_GROUPS = hasattr(os, "killpg") and hasattr(os, "waitid")  # POSIX: the worker leads a process group


@dataclass(frozen=True)
class Artifact:
    path: Path
    kind: str
    quant: str
    quality: dict[str, Any] | None  # from the manifest's verification entry


def _quality(verification: dict[str, Any] | None) -> dict[str, Any] | None:
    if not verification or "mean_kl" not in verification:
        return None
    keys = ("mean_kl", "p99_kl", "top1", "ppl", "ppl_ref", "ppl_delta_pct", "passed")
    return {"source": "manifest verification", **{k: verification.get(k) for k in keys}}


def _manifest_entries(directory: Path) -> dict[str, Any]:
    from edgekit.manifest import MANIFEST_NAME, load_manifest

    if not (directory / MANIFEST_NAME).is_file():
        return {}
    return {a.file: a for a in load_manifest(directory).artifacts}


def resolve_artifacts(paths: list[Path]) -> tuple[list[Artifact], list[dict[str, str]]]:
    """Files, ONNX directories and edgekit output directories -> artifacts to measure.

    An output directory contributes every artifact in its manifest that a runtime here can
    open; the others are listed as skipped. A path that is missing or of unknown kind is
    an error, before anything runs."""
    from edgekit.runtimes.registry import RUNTIMES, detect

    if not paths:
        raise InputError("no artifact given", hint="pass .gguf files, ONNX directories or edgekit output directories")
    out: list[Artifact] = []
    skipped: list[dict[str, str]] = []
    runnable = {k.value for k in RUNTIMES}
    for p in paths:
        p = Path(p)
        entries = _manifest_entries(p) if p.is_dir() else {}
        if entries:
            for name, e in entries.items():
                if e.format not in runnable:
                    skipped.append({"artifact": str(p / name), "reason": f"no runtime for {e.format} here"})
                    continue
                kind, path = detect(p / name)
                out.append(Artifact(path, kind.value, e.quant, _quality(e.verification)))
            continue
        kind, path = detect(p)  # raises for missing paths and unknown kinds; every kind it returns has a runtime
        entry = _manifest_entries(path.parent).get(path.name)
        quant = entry.quant if entry is not None else _quant_of(path, kind)
        out.append(Artifact(path, kind.value, quant, _quality(entry.verification) if entry else None))
    return out, skipped


def _quant_of(path: Path, kind: ArtifactKind) -> str:
    """The quant type of an artifact with no manifest entry: a GGUF's ``general.file_type``,
    else the longest quant name (of either format's table) the file name ends with."""
    from edgekit.converters.gguf.inspect import read_gguf
    from edgekit.converters.gguf.quants import QUANTS as GGUF_QUANTS
    from edgekit.converters.gguf.quants import names_by_file_type
    from edgekit.converters.onnx.quants import QUANTS as ONNX_QUANTS
    from edgekit.runtimes.registry import ArtifactKind

    if kind is ArtifactKind.GGUF:
        ftype = read_gguf(path).metadata.get("general.file_type")
        if isinstance(ftype, int) and ftype in names_by_file_type():
            return names_by_file_type()[ftype]
    stem = path.stem.lower()
    return max((q.name for q in (*GGUF_QUANTS, *ONNX_QUANTS) if stem.endswith(q.name)), key=len, default="?")


def run_bench(paths: list[Path], settings: BenchSettings, *, output: Path | None = None, text: Path | None = None,
              profile: str | None = None, label: str | None = None, tegrastats: str | None = None,
              progress: ProgressFn | None = None) -> BenchResults:
    """Measure every artifact at every thread count; save to ``output`` as it goes.

    On KeyboardInterrupt the current result is marked interrupted with the repetitions it
    has, the file is saved, and the interrupt propagates."""
    if settings.prompt_tokens < 1 or settings.gen_tokens < 1 or settings.repetitions < 1 or settings.warmup < 0:
        raise InputError("prompt tokens, gen tokens and repetitions must be >= 1 (warm-up >= 0)")
    if text is None:
        from edgekit.demo import heldout_path

        text = heldout_path()
    if not Path(text).is_file():
        raise InputError(f"prompt text {text} does not exist", hint="pass a UTF-8 text file with --text / text=")
    artifacts, skipped = resolve_artifacts(paths)
    threads = settings.threads or (usable_cores(),)
    settings = BenchSettings(**{**asdict(settings), "threads": tuple(threads)})
    report(progress, "conditions", "detecting this host")
    host = host_conditions(profile, label)
    cores = host.get("cores") or 1
    if (host.get("load_average_1m") or 0) > 0.5 * cores:
        log.warning("load average %.1f on %d cores: other work shares the CPU; llama.cpp's thread barriers "
                    "stall when oversubscribed, so numbers will be low (try fewer --threads)",
                    host["load_average_1m"], cores)
    results = BenchResults(settings=settings, host=host, skipped=skipped, created=now_utc())
    _save(results, output)
    total = len(artifacts) * len(threads)
    try:
        for art in artifacts:
            size, digest = artifact_digest(art.path)
            for t in threads:
                r = BenchResult(artifact=art.path.name, path=str(art.path.resolve()), kind=art.kind, quant=art.quant,
                                size_bytes=size, sha256=digest, threads=t, quality=art.quality)
                results.results.append(r)
                report(progress, "bench", f"{art.path.name} ({t} threads)", len(results.results) - 1, total)
                _measure(r, art, t, settings, host, text, tegrastats, results, output, progress)
        results.status = Status.COMPLETE.value
    except KeyboardInterrupt:
        results.status = Status.INTERRUPTED.value
        if results.results and results.results[-1].status == Status.RUNNING.value:
            _finish(results.results[-1], settings, Status.INTERRUPTED)
        _save(results, output)
        raise
    _save(results, output)
    report(progress, "bench", "done", total, total)
    return results


def _save(results: BenchResults, output: Path | None) -> None:
    if output is not None:
        results.save(output)


def _finish(r: BenchResult, settings: BenchSettings, status: Status, error: str | None = None) -> None:
    reps = [Repetition(**rep) for rep in r.repetitions]
    r.metrics = {
        settings.pp_name: asdict(Stat.of([x.prompt_tokens_per_s for x in reps], "tok/s")),
        settings.tg_name: asdict(Stat.of([x.gen_tokens_per_s for x in reps], "tok/s")),
        "ttft_ms": asdict(Stat.of([x.ttft_s * 1000 for x in reps], "ms")),
    }
    r.status, r.error = status.value, error


def _measure(r: BenchResult, art: Artifact, threads: int, settings: BenchSettings, host: dict[str, Any],
             text: Path, tegrastats: str | None, results: BenchResults, output: Path | None,
             progress: ProgressFn | None) -> None:
    spec = {"path": str(art.path), "threads": threads, "n_ctx": settings.ctx, "device": settings.device,
            "prompt_tokens": settings.prompt_tokens, "gen_tokens": settings.gen_tokens,
            "repetitions": settings.repetitions, "warmup": settings.warmup, "text": str(text),
            "tegrastats": tegrastats}
    # stderr goes to a file, not a pipe: nothing reads it while stdout is consumed, so a pipe
    # would block the worker once it wrote more than the pipe buffer (64 KiB) of warnings.
    # Popen as a context manager closes the stdout pipe (a ResourceWarning otherwise).
    # The worker gets a process group of its own: Ctrl-C reaches this process only, which
    # then ends the whole group (the worker and what it started, e.g. tegrastats) at once.
    error: str | None = None
    with tempfile.TemporaryFile() as stderr_file, subprocess.Popen(
            [sys.executable, "-m", "edgekit.bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr_file, text=True, start_new_session=_GROUPS) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(spec) + "\n")  # kept open: the worker exits when it closes (its EOF)
            proc.stdin.flush()
            for line in proc.stdout:
                if not line.startswith(EVENT_PREFIX):
                    continue
                ev = json.loads(line[len(EVENT_PREFIX):])
                kind = ev.pop("event")
                if kind == "start":
                    r.memory["baseline_rss_bytes"] = ev["baseline_rss_bytes"]
                elif kind == "loaded":
                    r.backend = ev["backend"]
                    r.memory["loaded_rss_bytes"] = ev["loaded_rss_bytes"]
                    r.memory["load_peak_rss_bytes"] = ev.get("load_peak_rss_bytes")
                    r.conditions = result_conditions(host, backend=r.backend, threads=threads, n_ctx=ev["n_ctx"],
                                                     device=settings.device, sha256=r.sha256, date=now_utc(),
                                                     prompt_tokens=settings.prompt_tokens, gen_tokens=settings.gen_tokens)
                elif kind == "rep":
                    r.repetitions.append(asdict(Repetition(**{k: ev[k] for k in Repetition.__dataclass_fields__})))
                    _finish(r, settings, Status.RUNNING)
                    _save(results, output)
                    report(progress, "repetition", _rep_line(r, settings), ev["index"], settings.repetitions)
                elif kind == "done":
                    r.memory.update({"peak_rss_bytes": ev["peak_rss_bytes"], "gpu_memory_bytes": ev["gpu_memory_bytes"],
                                     "gpu_memory_method": ev["gpu_memory_method"],
                                     "method": "fresh process per artifact: VmHWM (peak resident set)"})
                    r.power = ev["power"]
                elif kind == "error":
                    error = ev["message"]
        except BaseException:  # Ctrl-C (KeyboardInterrupt) included: end the worker now, keep what it measured
            _reap(proc, kill=True)
            raise
        _reap(proc)
        if proc.returncode != 0 and error is None:
            stderr = _tail(stderr_file, STDERR_TAIL)
            crash = " (killed by a signal: the runtime crashed)" if proc.returncode < 0 else ""
            error = f"worker exited with {proc.returncode}{crash}: {stderr.splitlines()[-1] if stderr else ''}"
    if error is not None:
        log.warning("%s: %s", r.artifact, error)
    _finish(r, settings, Status.FAILED if error else Status.COMPLETE, error)
    _save(results, output)


def _reap(proc: subprocess.Popen[str], kill: bool = False) -> None:
    """Wait for the worker (SIGKILL it first with ``kill``) and end what it left in its group.

    SIGKILL, not SIGINT: the worker may be inside a native decode call or starved of CPU on a
    loaded host; the repetitions it finished are saved already, and a kill cannot be ignored.
    The group is signalled while the exited worker is still a zombie (waitid WNOWAIT), so its
    pid -- the group's id -- cannot have been reused by then."""
    if not _GROUPS:
        if kill:
            proc.kill()
        proc.wait()
        return
    if kill:
        _kill_group(proc.pid)
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:  # reaped already: its group id may be reused, leave it alone
        proc.wait()
        return
    _kill_group(proc.pid)  # e.g. a tegrastats the worker started and could not stop
    proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nobody left in the group
        pass


def _tail(f: IO[bytes], n: int) -> str:
    """The last ``n`` bytes of ``f``, decoded and stripped."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode("utf-8", errors="replace").strip()


def _rep_line(r: BenchResult, settings: BenchSettings) -> str:
    pp, tg = r.metrics[settings.pp_name], r.metrics[settings.tg_name]
    return (f"{r.artifact}: {settings.pp_name} {pp['mean']:.1f} ± {pp['std']:.1f}, "
            f"{settings.tg_name} {tg['mean']:.1f} ± {tg['std']:.1f} tok/s")
