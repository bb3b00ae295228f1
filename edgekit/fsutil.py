"""File helpers: atomic outputs and hashing.

Outputs are written under a temporary name in the destination directory and renamed
into place only once complete (and verified), so an interrupted or failed run never
leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

TMP_PREFIX = ".edgekit-tmp-"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of an artifact: a file's own sha256, or for a directory (ONNX, GPTQ)
    the sha256 over ``relative/name:sha256`` lines of its files in name order. The
    manifest and ``edgekit bench`` both use this, so their digests compare."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size, sha256_file(path)
    h, size = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size += f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}:{sha256_file(f)}\n".encode())
    return size, h.hexdigest()


def ensure_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {path}: {e.strerror}",
                          hint="choose a writable location with -o / out_dir") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable",
                          hint="choose a writable location with -o / out_dir")
    return path


def output_error(e: OSError, target: Path) -> OutputError:
    """Turn an OSError while writing into a one-line error naming the cause."""
    if e.errno == errno.ENOSPC or _nearly_full(target.parent):
        # numpy's tofile reports a short write without errno: ask the filesystem instead
        return OutputError(f"disk full while writing {target}", hint="free space or choose another -o / out_dir")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {target}: {e.strerror}", hint="choose a writable location with -o / out_dir")
    return OutputError(f"cannot write {target}: {e.strerror or e}")


def _nearly_full(directory: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(directory).free < margin
    except OSError:
        return False


def temp_path_for(final: Path) -> Path:
    """A unique temporary path next to ``final`` (same filesystem, so rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=final.suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temp path; on success rename it to ``final``, on any failure delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = temp_path_for(final)
    except OSError as e:
        raise output_error(e, final) from e
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        _remove(tmp)
        raise output_error(e, final) from e
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Directory version of :func:`atomic_output` (for multi-file artifacts such as ONNX)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(e, final) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_output(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(final: Path, data: Any) -> None:
    """Indented JSON (non-JSON values such as paths as strings), written atomically."""
    write_text_atomic(final, json.dumps(data, indent=2, default=str) + "\n")


def clean_stale_temps(directory: Path) -> None:
    """Remove temp files a killed run (SIGKILL, power loss) could not clean up itself."""
    if not directory.is_dir():
        return
    for p in directory.glob(TMP_PREFIX + "*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            _remove(p)


def _remove(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()
