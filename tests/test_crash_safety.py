"""Crash-safe writes: SIGKILL a conversion at several moments; the output directory's lock.

A child process converts the packaged demo model (f16 then q8_0) and is killed with SIGKILL
at a chosen point: while tensors stream into the f16 file, while llama.cpp quantizes q8_0,
when verification starts (the written f16 file waits under its temporary name), and just
before the manifest's rename. What is left must be only
complete artifacts (the same bytes a clean run writes) and a manifest whose every entry
exists with its size and sha256; a rerun into the same directory takes over the dead run's
lock, succeeds, and writes identical files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import OutputError
from edgekit.fsutil import LOCK_NAME, TMP_PREFIX, output_lock, sha256_file
from edgekit.manifest import MANIFEST_NAME

# The child: converts, and at POINT kills itself with SIGKILL (the real signal, at a chosen moment).
CHILD = textwrap.dedent('''
    import os, signal, sys, threading
    from pathlib import Path
    import edgekit
    from edgekit.demo import demo_model_dir

    point, out, verify = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "streaming":  # the 12th write of the f16 file's tensor data
        from edgekit.converters.gguf import writer
        real, calls = writer._write_all, [0]
        def counted(f, data):
            calls[0] += 1
            if calls[0] == 12:
                die()
            return real(f, data)
        writer._write_all = counted
    elif point == "quantization":  # once llama.cpp has started writing the q8_0 file
        from edgekit.converters.gguf import convert
        real_q = convert.quantize_file
        def quantize(base, tmp, *a, **k):
            def watch():
                while not (Path(tmp).exists() and Path(tmp).stat().st_size > 0):
                    pass
                die()
            threading.Thread(target=watch, daemon=True).start()
            real_q(base, tmp, *a, **k)
            die()  # finished before the watcher saw it: still before the rename
        convert.quantize_file = quantize
    elif point == "verification":  # the first artifact's verification begins (its reference is built)
        from edgekit.converters import pipeline
        pipeline.SourceReference = lambda *a, **k: die()
    elif point == "manifest":  # the second manifest update: its temp file written, not renamed
        import edgekit.fsutil as fsutil
        real_r, n = os.replace, [0]
        def replace(src, dst):
            if str(dst).endswith("edgekit.json"):
                n[0] += 1
                if n[0] == 2:
                    die()
            return real_r(src, dst)
        fsutil.os.replace = replace
    edgekit.convert(demo_model_dir(), out, to="gguf", quants="f16,q8_0", verify=verify)
''')


def _convert(out: Path, point: str = "none", verify: bool = False) -> subprocess.CompletedProcess[str]:
    # a short evaluation set: the kill lands when verification starts, the figures do not matter
    env = {**os.environ, "EDGEKIT_EVAL_TOKENS": "256"}
    return subprocess.run([sys.executable, "-c", CHILD, point, str(out), "1" if verify else "0"],
                          capture_output=True, text=True, timeout=300, env=env)


def _artifacts(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(out.glob("*.gguf")) if not p.name.startswith(TMP_PREFIX)}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("clean")
    r = _convert(out)
    assert r.returncode == 0, r.stderr[-2000:]
    files = _artifacts(out)
    assert sorted(files) == ["model-f16.gguf", "model-q8_0.gguf"]
    return files


def _check_consistent(out: Path, clean: dict[str, str]) -> None:
    """Only complete artifacts; every manifest entry exists with its size and sha256."""
    if (out / MANIFEST_NAME).exists():
        m = json.loads((out / MANIFEST_NAME).read_text())  # never a half-written manifest
        for a in m["artifacts"]:
            p = out / a["file"]
            assert p.is_file(), f"the manifest lists {a['file']}, which is missing"
            assert (p.stat().st_size, sha256_file(p)) == (a["size_bytes"], a["sha256"])
    for name, digest in _artifacts(out).items():  # any artifact under its final name is whole
        assert digest == clean[name], f"{name} under its final name differs from a clean run's"
    leftovers = {p.name for p in out.iterdir()} - set(clean) - {MANIFEST_NAME, LOCK_NAME}
    assert all(n.startswith(TMP_PREFIX) for n in leftovers), leftovers


@pytest.mark.parametrize(("point", "verify"), [("streaming", False), ("quantization", False),
                                               ("verification", True), ("manifest", False)])
def test_sigkill_leaves_only_complete_artifacts(clean_run: dict[str, str], tmp_path: Path, point: str,
                                                verify: bool) -> None:
    out = tmp_path / "out"
    r = _convert(out, point, verify)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert (out / LOCK_NAME).is_file()  # the dead run's lock is still there
    _check_consistent(out, clean_run)
    if point == "manifest":  # killed on the second artifact's record: the first is recorded
        listed = [a["file"] for a in json.loads((out / MANIFEST_NAME).read_text())["artifacts"]]
        assert listed == ["model-f16.gguf"]
    if point == "verification":  # the artifact being verified never got its final name
        assert not _artifacts(out)
    r = _convert(out)  # the rerun takes the stale lock over and finishes
    assert r.returncode == 0, r.stderr[-2000:]
    _check_consistent(out, clean_run)
    assert _artifacts(out) == clean_run  # identical files (sha256)
    assert sorted(p.name for p in out.iterdir()) == sorted([*clean_run, MANIFEST_NAME])  # temps and lock gone


def test_lock_names_the_other_process_and_a_dead_ones_is_taken_over(tmp_path: Path) -> None:
    from edgekit.demo import demo_model_dir

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from pathlib import Path
        from edgekit.fsutil import output_lock
        with output_lock(Path({str(out)!r})):
            print("held", flush=True)
            time.sleep(120)
    ''')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError) as err:
            edgekit.convert(demo_model_dir(), out, to="gguf", quants="f16", verify=False)
        msg = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg and LOCK_NAME in msg
        assert not list(out.glob("*.gguf"))  # refused before writing anything
        from edgekit.converters.gguf.convert import convert_gguf  # the format's own entry point too

        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            convert_gguf(demo_model_dir(), out, "f16", verify_artifacts=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by the kill
    result = edgekit.convert(demo_model_dir(), out, to="gguf", quants="f16", verify=False)
    assert [a.file for a in result.artifacts] == ["model-f16.gguf"]
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    d = tmp_path / "d"
    with output_lock(d):
        rec = json.loads((d / LOCK_NAME).read_text())
        assert (rec["pid"], rec["host"]) == (os.getpid(), socket.gethostname())
        with output_lock(d):  # a multi-format run nests conversions in one process
            pass
        assert (d / LOCK_NAME).exists()
    assert not d.exists()  # created by the lock, nothing written: removed again
    d.mkdir()
    (d / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                           "started": time.strftime("%Y")}))  # no such pid: stale
    with output_lock(d):
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
