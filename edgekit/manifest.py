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
from .errors import CorruptFileError, InputError
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
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict) \
                or not isinstance(data.get("artifacts", []), list):
            raise TypeError("expected an object with a source object and an artifacts list")
        arts = [ArtifactEntry(**a) for a in data.get("artifacts", [])]
        return Manifest(source=data["source"], artifacts=arts, edgekit_version=data.get("edgekit_version", "?"),
                        schema=int(data.get("schema", SCHEMA)))
    except (ValueError, KeyError, TypeError) as e:  # ValueError: JSON syntax, not UTF-8, a bad schema number
        raise CorruptFileError(p, f"not a valid edgekit manifest ({type(e).__name__}: {e})",
                               hint="repair it, or move it away (the artifacts it lists then lose their "
                                    "records) and convert again") from e
    except OSError as e:
        raise CorruptFileError(p, f"cannot be read ({e.strerror or e})", hint="check its permissions") from e


def open_or_new(directory: Path, source: dict[str, Any]) -> Manifest:
    """The directory's manifest if it describes the same source weights, else a fresh one.

    A manifest is the only record of its artifacts' hashes and verification figures, and the
    next save replaces it, so it is never silently dropped. A corrupt one is refused, not moved
    aside: a moved-aside file is one nobody looks at, while the artifacts it described would
    sit in the directory with a new manifest that does not list them; refusing keeps the
    decision (repair, move away, other directory) with the user. A manifest of another source
    is refused while any artifact it lists is still on disk (one manifest describes one source).
    """
    p = directory / MANIFEST_NAME
    if not p.is_file():
        return Manifest(source=source)
    m = load_manifest(p)  # CorruptFileError, naming the file, when it cannot be read
    if same_source(m.source, source):
        m.source = source
        return m
    kept = [a.file for a in m.artifacts if (directory / a.file).exists()]
    if kept:
        old = m.source.get("path") or "another model"
        raise InputError(
            f"{p} records {len(kept)} artifact(s) of another source ({old}, weights sha256 "
            f"{str(m.source.get('weights_sha256'))[:12]}{', with an adapter' if m.source.get('adapter') else ''}): "
            f"{', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''}",
            hint="convert into another output directory (-o / out_dir), or delete those artifacts and the manifest")
    return Manifest(source=source)  # it lists no file that still exists: nothing is lost


def same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same weights and the same adapter file (or none): the artifacts describe one model
    (where the adapter directory lives does not matter)."""
    def adapter(s: dict[str, Any]) -> Any:
        return (s.get("adapter") or {}).get("sha256")

    return bool(a.get("weights_sha256") == b.get("weights_sha256") and adapter(a) == adapter(b))
