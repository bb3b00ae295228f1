"""``OUT_DIR/edgekit.json``: what was converted from what, and how well it matched.

One manifest per output directory, shared by every format; entries are keyed by
(format, quant) so converting again replaces an entry instead of duplicating it.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CorruptFileError
from .fsutil import write_json_atomic

MANIFEST_NAME = "edgekit.json"
SCHEMA = 1


@dataclass
class ArtifactEntry:
    file: str  # relative to the manifest's directory
    format: str  # "gguf" | "onnx" | "gptq"
    quant: str
    precision: str
    size_bytes: int
    sha256: str
    verification: dict[str, Any] | None  # VerificationReport.to_dict(); None with --no-verify
    seconds: float = 0.0
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    source: dict[str, Any]
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    edgekit_version: str = __version__
    schema: int = SCHEMA

    def upsert(self, entry: ArtifactEntry) -> None:
        self.artifacts = [a for a in self.artifacts if (a.format, a.quant) != (entry.format, entry.quant)]
        self.artifacts.append(entry)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "edgekit_version": self.edgekit_version, "source": self.source,
                "artifacts": [asdict(a) for a in self.artifacts]}

    def save(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path


def load_manifest(path: Path) -> Manifest:
    p = path / MANIFEST_NAME if path.is_dir() else path
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        arts = [ArtifactEntry(**a) for a in data.get("artifacts", [])]
        return Manifest(source=data["source"], artifacts=arts, edgekit_version=data.get("edgekit_version", "?"),
                        schema=int(data.get("schema", SCHEMA)))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptFileError(p, f"not a valid edgekit manifest ({type(e).__name__}: {e})",
                               hint="delete it and convert again") from e


def open_or_new(directory: Path, source: dict[str, Any]) -> Manifest:
    """The directory's manifest if it describes the same source weights, else a fresh one."""
    p = directory / MANIFEST_NAME
    if p.is_file():
        try:
            m = load_manifest(p)
            if m.source.get("weights_sha256") == source.get("weights_sha256") and \
                    m.source.get("adapter") == source.get("adapter"):
                m.source = source
                return m
        except CorruptFileError:
            pass
    return Manifest(source=source)
