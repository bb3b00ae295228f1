"""A GGUF laid out for LM Studio: ``<models dir>/<publisher>/<model>/<file>.gguf``.

LM Studio lists every GGUF two directories below its models directory and reads the chat
template and stop tokens from the file itself. The file is hard-linked (same filesystem:
no second copy, no dangling link if the original moves), else symlinked, and copied only
when neither works; always under a temporary name first, then renamed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, OutputError

log = logging.getLogger(__name__)

DEFAULT_PUBLISHER = "edgekit"


def default_models_dir() -> Path:
    """LM Studio's models directory: $LMSTUDIO_MODELS_DIR, else ~/.lmstudio/models (0.3+), else
    the older ~/.cache/lm-studio/models when only that exists."""
    env = os.environ.get("LMSTUDIO_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    new, old = Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"
    return old if old.is_dir() and not new.is_dir() else new


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


@dataclass(frozen=True)
class LMStudioExport:
    path: Path
    gguf: Path
    method: str  # hardlink | symlink | copy | existing

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "gguf": str(self.gguf), "method": self.method}


def _writable_ancestor(path: Path) -> Path:
    """The nearest existing directory above (or at) ``path``, which must be writable for
    ``path`` to be created: checked before anything is made, so nothing is left half done."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"LM Studio models directory {path} is not writable ({p} is not a writable directory)",
                          hint="pass a writable --models-dir / models_dir=, or fix its permissions")
    return p


def export_lmstudio(gguf: Path, models_dir: Path | None = None, *, publisher: str = DEFAULT_PUBLISHER,
                    model: str | None = None) -> LMStudioExport:
    from edgekit.converters.gguf.inspect import read_gguf

    gguf = Path(gguf).resolve()
    summary = read_gguf(gguf)  # a real GGUF, not any file
    name = model or str(summary.metadata.get("general.name") or gguf.stem)
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    target_dir = root / _slug(publisher) / _slug(name)
    final = target_dir / gguf.name
    _writable_ancestor(target_dir)
    if final.exists() and os.path.samefile(final, gguf):  # exported before (link or the file itself)
        return LMStudioExport(final, gguf, "existing")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {target_dir}: {e.strerror}",
                          hint="pass a writable --models-dir / models_dir=") from e
    tmp = target_dir / f".edgekit-tmp-{os.getpid()}-{gguf.name}"
    method = _place(gguf, tmp)
    try:
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {final}: {e.strerror}", hint="pass a writable --models-dir / models_dir=") from e
    log.info("LM Studio: %s -> %s (%s)", gguf, final, method)
    return LMStudioExport(final, gguf, method)


def _place(src: Path, tmp: Path) -> str:
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        return "hardlink"
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise OutputError(f"cannot link {src} into {tmp.parent}: {e.strerror}",
                              hint="pass a writable --models-dir / models_dir=") from e
    try:
        os.symlink(src, tmp)
        return "symlink"
    except OSError:
        pass
    try:
        shutil.copyfile(src, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot copy {src} into {tmp.parent}: {e.strerror}",
                          hint="pass a writable --models-dir / models_dir= with room for the file") from e
    return "copy"


def require_gguf(path: Path, quant: str | None = None) -> Path:
    """The GGUF an artifact argument names (a .gguf file, or an output directory and --quant)."""
    from edgekit.runtimes.registry import ArtifactKind, detect

    kind, art = detect(Path(path), quant)
    if kind != ArtifactKind.GGUF:
        raise InputError(f"{art} is a {kind.value} artifact; Ollama and LM Studio run GGUF files",
                         hint="convert with --to gguf, or pass a .gguf file (or --quant with a GGUF quant)")
    return art
