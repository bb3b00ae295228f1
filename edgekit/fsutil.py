"""File helpers: atomic outputs, the output directory's lock, and hashing.

Outputs are written under a temporary name in the destination directory, fsynced, and renamed
into place only once complete (and verified), then the directory itself is fsynced: an
interrupted run (an exception, SIGKILL, a power cut) never leaves a half-written artifact,
manifest or results file under its final name. One process writes into an output directory at
a time (:func:`output_lock`); a lock left by a killed process is taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import OutputError

TMP_PREFIX = ".edgekit-tmp-"
LOCK_NAME = ".edgekit-lock"
F = TypeVar("F", bound=Callable[..., Any])


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
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; an artifact gets the usual mode
    return Path(name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename), to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # a directory that cannot be opened (Windows): the rename is what matters
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # filesystems without fsync on directories
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fsync_path(p)
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        fsync_path(d)
    fsync_path(root)


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
        fsync_path(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, final)
        fsync_path(final.parent)  # and the rename itself survives a power cut
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
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if final.exists():  # moved aside, not deleted first: a kill now leaves the old artifact whole
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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


# -- one writer per output directory ---------------------------------------------------------------

_held: dict[Path, int] = {}  # directories this process holds the lock of -> nesting depth
_held_guard = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lock_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:200]}


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """Who holds ``directory``'s lock, when another live process does (None: free, ours, or stale)."""
    rec = _read_lock(Path(directory) / LOCK_NAME)
    if rec is None or (rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname()):
        return None
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int) and not _pid_alive(rec["pid"]):
        return None  # stale: its process was killed
    return rec


def _busy(directory: Path, rec: dict[str, Any]) -> OutputError:
    return OutputError(
        f"{directory} is being written by another edgekit process (pid {rec.get('pid')} on {rec.get('host')}, "
        f"since {rec.get('started')}: {rec.get('command', '?')})",
        hint=f"wait for it to finish or write into another directory (-o / out_dir); if that process is gone, "
             f"delete {Path(directory) / LOCK_NAME}")


def check_output_lock(directory: Path) -> None:
    """Refuse to write into ``directory`` while another live process holds its lock."""
    rec = lock_holder(directory)
    if rec is not None:
        raise _busy(directory, rec)


def _acquire(directory: Path) -> None:
    path = directory / LOCK_NAME
    record = json.dumps(_lock_record())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            rec = lock_holder(directory)
            if rec is not None:
                raise _busy(directory, rec) from None
            # stale (a killed process) or unreadable: replaced atomically, then read back -- of two
            # processes taking it over at once, the one whose record stays wins
            tmp = temp_path_for(path)
            tmp.write_text(record, encoding="utf-8")
            os.replace(tmp, path)
            mine = _read_lock(path)
            if mine is not None and mine.get("pid") == os.getpid() and mine.get("host") == socket.gethostname():
                return
            continue
        except OSError as e:
            raise output_error(e, path) from e
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record)
        return
    rec = _read_lock(path) or {}
    raise _busy(directory, rec)


def _release(directory: Path) -> None:
    path = directory / LOCK_NAME
    rec = _read_lock(path)
    if rec is not None and rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
        _remove(path)


@contextlib.contextmanager
def output_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock (``.edgekit-lock``: pid, host, start, command) while writing into it.

    A second process is refused with a line naming the holder; a lock whose process is dead (same
    host) is taken over. Re-entrant within one process (a multi-format run nests conversions)."""
    created = not Path(directory).exists()
    directory = ensure_writable_dir(Path(directory)).resolve()
    with _held_guard:
        depth = _held.get(directory, 0)
        if depth == 0:
            _acquire(directory)
        _held[directory] = depth + 1
    try:
        yield
    finally:
        with _held_guard:
            _held[directory] -= 1
            if _held[directory] == 0:
                del _held[directory]
                _release(directory)
                if created:  # refused before writing anything (bad input): leave no empty directory
                    with contextlib.suppress(OSError):
                        directory.rmdir()


def holding_output_lock(out_dir_arg: int) -> Callable[[F], F]:
    """Decorator: the wrapped function runs holding :func:`output_lock` on its argument ``out_dir_arg``
    (a position; ``out_dir=`` by keyword works too)."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            out_dir = kwargs["out_dir"] if "out_dir" in kwargs else args[out_dir_arg]
            with output_lock(Path(out_dir)):
                return fn(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap
