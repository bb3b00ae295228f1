"""``edgekit fleet convert``: conversions (verification included) fanned out over the cluster's CPUs.

One job per model directory -- its quants together, so the source is read and the reference
computed once, as ``edgekit convert`` does -- on any node with ``cpus`` free CPUs. The model
reaches the node at its own path when the node sees it there (sha256 over its files checked),
else as a copy through Ray's object store; the outputs come back the same way and land in one
tree, ``OUT/<model directory name>/`` (artifacts and ``edgekit.json``), each directory renamed
into place only when whole. A node that dies mid-job: Ray runs the job again elsewhere
(``retries``); a conversion that fails (verification, bad input) is reported with its error
and the other models go on.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InputError
from edgekit.fsutil import artifact_digest, atomic_output_dir, ensure_writable_dir
from edgekit.progress import ProgressFn, report

from .cluster import connect

log = logging.getLogger(__name__)


@dataclass
class ConvertOutcome:
    model: str
    out_dir: Path
    status: str  # complete | failed
    error: str | None = None
    node_id: str | None = None
    board: str | None = None
    files: list[str] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # the manifest's entries


def _files_of(directory: Path) -> dict[str, Any]:
    """Relative path -> read-only memory map of every file (Ray stores numpy arrays without a heap copy)."""
    import numpy as np

    return {f.relative_to(directory).as_posix(): np.memmap(f, dtype=np.uint8, mode="r").view(np.ndarray)
            if f.stat().st_size else b""
            for f in sorted(directory.rglob("*")) if f.is_file()}


def _write_files(files: dict[str, Any], directory: Path) -> None:
    for rel, data in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(memoryview(data) if len(data) else b"")


def convert_job(spec: dict[str, Any], refs: list[Any]) -> dict[str, Any]:
    """On a node: one model directory converted (and verified) into a temporary directory,
    whose files go back to the driver."""
    import ray

    import edgekit

    from .cluster import board_facts_here

    node_id = str(ray.get_runtime_context().get_node_id())
    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-convert-") as tmp:
        model = Path(spec["path"])
        if not (model.is_dir() and artifact_digest(model) == (spec["size"], spec["sha256"])):
            if not refs:
                return {"status": "need-transfer", "node_id": node_id}
            model = Path(tmp) / "model"
            _write_files(ray.get(refs[0]), model)
            if artifact_digest(model) != (spec["size"], spec["sha256"]):
                raise InputError(f"{spec['name']}: the copy received does not match the model's sha256",
                                 hint="the model directory changed while the job ran; run the command again")
        out = Path(tmp) / "out"
        edgekit.convert(model, out, to=spec["to"], **spec["options"])
        files = {rel: bytes(memoryview(data)) if len(data) else b"" for rel, data in _files_of(out).items()}
    return {"status": "done", "node_id": node_id, "board": board_facts_here().get("name"), "files": files}


def fleet_convert(model_dirs: list[Path], out_dir: Path, *, to: str = "gguf", cpus: int = 1, retries: int = 2,
                  address: str | None = None, transfer: str = "auto", progress: ProgressFn | None = None,
                  **options: Any) -> list[ConvertOutcome]:
    """Convert every model directory on the cluster; ``options`` as ``edgekit.convert`` takes them."""
    from edgekit.converters.plan import plan_conversion
    from edgekit.manifest import MANIFEST_NAME, load_manifest

    if not model_dirs:
        raise InputError("no model directory given", hint="pass Hugging Face model directories")
    plan_conversion(to, **options)  # a bad option or quant fails here, before any job is sent
    names = [Path(m).resolve().name for m in model_dirs]
    for m in model_dirs:
        if not Path(m).is_dir():
            raise InputError(f"{m} is not a model directory", hint="pass Hugging Face model directories")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two model directories are both named {dupes[0]!r}: their outputs would share OUT/{dupes[0]}",
                         hint="rename one, or convert them in two runs with different -o / out_dir")
    if transfer not in ("auto", "shared", "object-store"):
        raise InputError(f"unknown transfer {transfer!r}", hint="--transfer / transfer=: auto, shared, object-store")
    out_dir = ensure_writable_dir(Path(out_dir))
    ray = connect(address)
    remote = ray.remote(convert_job)
    specs: list[dict[str, Any]] = []
    for m, name in zip(model_dirs, names, strict=True):
        size, digest = artifact_digest(Path(m))
        specs.append({"name": name, "path": str(Path(m).resolve()), "size": size, "sha256": digest, "to": to,
                      "options": options})
    puts: dict[str, Any] = {}

    def submit(spec: dict[str, Any], copy: bool) -> Any:
        refs = []
        if copy:
            puts.setdefault(spec["sha256"], ray.put(_files_of(Path(spec["path"]))))
            refs = [puts[spec["sha256"]]]
        return remote.options(num_cpus=cpus, max_retries=retries).remote(spec, refs)

    inflight = {submit(s, transfer == "object-store"): s for s in specs}
    outcomes: list[ConvertOutcome] = []
    try:
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            spec = inflight.pop(ref)
            target = out_dir / spec["name"]
            try:
                res = ray.get(ref)
            except Exception as e:  # the job raised (verification, bad input) or every retry's node died
                cause = getattr(e, "cause", None) or e
                msg = cause.one_line() if isinstance(cause, EdgekitError) else f"{type(cause).__name__}: {cause}"
                outcomes.append(ConvertOutcome(spec["name"], target, "failed", msg.strip().splitlines()[0]))
                log.warning("%s: %s", spec["name"], msg)
                report(progress, "convert", f"{spec['name']}: failed -- {outcomes[-1].error}", len(outcomes), len(specs))
                continue
            if res["status"] == "need-transfer":
                if transfer == "shared":
                    outcomes.append(ConvertOutcome(spec["name"], target, "failed",
                                                   f"node {res['node_id'][:8]} does not see {spec['path']}"))
                    continue
                inflight[submit(spec, True)] = spec
                continue
            with atomic_output_dir(target) as tmp:
                _write_files(res["files"], tmp)
            entries = [{"file": a.file, "format": a.format, "quant": a.quant,
                        "passed": (a.verification or {}).get("passed")}
                       for a in load_manifest(target).artifacts] if (target / MANIFEST_NAME).is_file() else []
            outcomes.append(ConvertOutcome(spec["name"], target, "complete", node_id=res["node_id"], board=res["board"],
                                           files=sorted(res["files"]), artifacts=entries))
            report(progress, "convert", f"{spec['name']}: {len(entries)} artifacts on {res['board']}", len(outcomes),
                   len(specs))
    except KeyboardInterrupt:
        for ref in inflight:
            ray.cancel(ref, force=True)
        raise
    return outcomes
