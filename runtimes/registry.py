"""Which runtime opens which artifact: detected from the file, registered in one table."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit._compat import StrEnum
from edgekit.errors import InputError, ModelNotFoundError

from .base import Session


class ArtifactKind(StrEnum):
    GGUF = "gguf"
    ONNX = "onnx"


# kind -> (module, Session class); imported only when that kind is opened
RUNTIMES: dict[ArtifactKind, tuple[str, str]] = {
    ArtifactKind.GGUF: ("edgekit.runtimes.llamacpp", "LlamaCppSession"),
    ArtifactKind.ONNX: ("edgekit.runtimes.onnx", "OnnxSession"),
}


def detect(path: Path, quant: str | None = None) -> tuple[ArtifactKind, Path]:
    """Resolve a file, an ONNX directory or an edgekit output directory to (kind, artifact path)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist", hint="pass a .gguf file, an ONNX model directory or "
                                                                "an edgekit output directory")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return ArtifactKind.GGUF, path
        raise InputError(f"{path} is not an artifact edgekit can run (not GGUF)",
                         hint="pass a .gguf file or an ONNX model directory")
    if (path / "genai_config.json").is_file():
        return ArtifactKind.ONNX, path
    from edgekit.manifest import MANIFEST_NAME, load_manifest

    if (path / MANIFEST_NAME).is_file():
        listed_arts = load_manifest(path).artifacts
        arts = listed_arts if quant is None else [a for a in listed_arts if a.quant == quant]
        runnable = [a for a in arts if a.format in {k.value for k in RUNTIMES}]
        if not runnable:
            listed = ", ".join(f"{a.format}:{a.quant}" for a in listed_arts) or "none"
            raise InputError(f"no runnable artifact{' with quant ' + quant if quant else ''} in {path}",
                             hint=f"artifacts listed: {listed}")
        return detect(path / runnable[0].file)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ArtifactKind.GGUF, ggufs[0]
    raise InputError(f"cannot tell which artifact to run in {path}",
                     hint="pass the .gguf file itself, or a directory with an edgekit.json manifest")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# load options every runtime shares: what each must be, and the fix (CLI flag / keyword)
_LOAD_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "n_ctx": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: the model's trained context)",
              "--ctx / n_ctx=4096"),
    "n_threads": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 or None (all cores)",
                  "--threads / n_threads=4, or leave it out for all cores"),
    "n_gpu_layers": (lambda v: _int(v) and v >= -1, "an integer >= -1 (-1: all layers)",
                     "--n-gpu-layers / n_gpu_layers=-1 (all) or 0 (none)"),
}


def check_load_options(options: dict[str, Any]) -> None:
    for name, (ok, must, fix) in _LOAD_RULES.items():
        if name in options and not ok(options[name]):
            raise InputError(f"{name} must be {must}, not {options[name]!r}", hint=f"pass {fix}")


def load(path: str | Path, *, quant: str | None = None, **options: Any) -> Session:
    check_load_options(options)
    kind, artifact = detect(Path(path), quant)  # only kinds with a registered runtime
    module, cls = RUNTIMES[kind]
    session_cls = getattr(importlib.import_module(module), cls)
    try:
        session: Session = session_cls(artifact, **options)
    except TypeError as e:  # an option no runtime of this kind takes (a typo from the Python API)
        if "unexpected keyword argument" not in str(e):
            raise
        raise InputError(f"{str(e).split('argument', 1)[-1].strip()} is not an option for {kind.value} artifacts",
                         hint="see `edgekit run --help` (or edgekit.load's docstring) for which options apply to which "
                              "format") from e
    return session
