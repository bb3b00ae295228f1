"""``edgekit convert --to gguf``: source -> float GGUF -> llama.cpp quants -> verified artifacts.

Every artifact is written under a temporary name in OUT_DIR and renamed only after it
passed verification, so an interrupted or failed run leaves no partial ``.gguf`` behind.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import VerificationError
from edgekit.fsutil import atomic_output, clean_stale_temps, ensure_writable_dir, sha256_file, temp_path_for
from edgekit.manifest import ArtifactEntry, Manifest, open_or_new
from edgekit.progress import ProgressFn, StepTimer, report

from ..lora import LoraAdapter
from ..source import open_source
from ..verify import Reference, VerificationReport, verify
from .archs import ArchSpec, spec_for
from .quantize import quantize_file
from .quants import FLOAT_QUANTS, GGUFQuant, parse_quants
from .writer import write_float_gguf

log = logging.getLogger(__name__)


@dataclass
class GGUFConversion:
    out_dir: Path
    manifest: Manifest
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    reports: list[VerificationReport] = field(default_factory=list)
    timer: StepTimer = field(default_factory=StepTimer)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _base_type(tags: set[str]) -> str:
    """The float type that holds the source exactly: bf16 sources stay bf16, f16 stay f16."""
    if tags <= {"BF16"}:
        return "bf16"
    if tags <= {"F16"}:
        return "f16"
    return "f32"


def convert_gguf(
    model_dir: Path,
    out_dir: Path,
    quants: str | list[str] = "f16",
    *,
    adapter_dir: Path | None = None,
    verify_artifacts: bool = True,
    name: str | None = None,
    threads: int | None = None,
    spec: ArchSpec | None = None,
    pre_override: str | None = None,
    progress: ProgressFn | None = None,
    timer: StepTimer | None = None,
) -> GGUFConversion:
    """Convert, quantize and verify. ``spec``/``pre_override`` exist to test the verifier."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted: list[GGUFQuant] = parse_quants(quants)
    timer = timer or StepTimer()

    with timer.step("read source"):
        source = open_source(model_dir)
        spec = spec or spec_for(source.config)
        adapter = LoraAdapter(adapter_dir) if adapter_dir is not None else None
        if adapter is not None:
            adapter.check_against(source)
        source_info = {
            "path": str(model_dir.resolve()), "architecture": source.architecture, "arch": spec.name,
            "weights_sha256": source.weights_sha256(), "weights_bytes": source.weights_bytes,
            "adapter": None if adapter is None else {"path": str(adapter.path.resolve()),
                                                     "sha256": sha256_file(adapter.file.path)},
        }
    ensure_writable_dir(out_dir)
    clean_stale_temps(out_dir)
    manifest = open_or_new(out_dir, source_info)
    result = GGUFConversion(out_dir, manifest, timer=timer)
    stem = _slug(name or model_dir.resolve().name)
    report(progress, "source", f"{spec.name}, {len(source.names())} tensors, "
                               f"{source.weights_bytes / 2**20:.1f} MiB{' + LoRA' if adapter else ''}")

    reference: Reference | None = None
    base_type = _base_type(source.dtype_tags())
    # The lossless float type, when requested, is written first and doubles as the
    # quantization base; otherwise a temporary base is written and deleted at the end.
    base_q = next((q for q in wanted if q.name == base_type), None)
    ordered = ([base_q] if base_q else []) + [q for q in wanted if q is not base_q]
    base_path: Path | None = None
    base_tmp: Path | None = None
    try:
        if base_q is None and any(q.name not in FLOAT_QUANTS for q in wanted):
            base_tmp = base_path = temp_path_for(out_dir / f"{stem}-{base_type}.gguf")
            with timer.step(f"write {base_type} (base for quantization)"):
                report(progress, f"write {base_type}", "streaming tensors (base for quantization)")
                write_float_gguf(source, base_tmp, spec=spec, out_type=base_type, adapter=adapter, name=name,
                                 pre_override=pre_override, progress=progress)

        for q in ordered:
            final = out_dir / f"{stem}-{q.name}.gguf"
            t0 = time.perf_counter()
            with atomic_output(final) as tmp:
                if q.name in FLOAT_QUANTS:
                    with timer.step(f"write {q.name}"):
                        report(progress, f"write {q.name}", "streaming tensors")
                        write_float_gguf(source, tmp, spec=spec, out_type=q.name, adapter=adapter, name=name,
                                         pre_override=pre_override, progress=progress)
                else:
                    assert base_path is not None
                    with timer.step(f"quantize {q.name}"):
                        report(progress, f"quantize {q.name}", "llama.cpp quantizer")
                        quantize_file(base_path, tmp, q, threads=threads)
                verification = None
                if verify_artifacts:
                    if reference is None:
                        with timer.step("reference (transformers)"):
                            report(progress, "reference", "running the source model in transformers")
                            reference = Reference(model_dir, adapter_dir)
                    with timer.step(f"verify {q.name}"):
                        rep = verify_gguf(tmp, final.name, q, reference, threads=threads)
                    result.reports.append(rep)
                    if not rep.passed:
                        raise VerificationError(final.name, rep.failures[0].split(":")[0], "; ".join(rep.failures))
                    verification = rep.to_dict()
                    m = rep.metrics
                    assert m is not None
                    report(progress, f"verify {q.name}", f"pass (KL {m.mean_kl:.2e}, top-1 {m.top1:.3f}, "
                                                         f"ppl {m.ppl:.3f} vs {m.ppl_ref:.3f})")
                size = tmp.stat().st_size
                entry = ArtifactEntry(file=final.name, format="gguf", quant=q.name, precision=q.precision.value,
                                      size_bytes=size, sha256=sha256_file(tmp), verification=verification,
                                      seconds=round(time.perf_counter() - t0, 3))
            if q is base_q:
                base_path = final
            manifest.upsert(entry)
            manifest.save(out_dir)  # after each rename: the manifest never lists a missing file
            result.artifacts.append(entry)
    finally:
        if base_tmp is not None:
            base_tmp.unlink(missing_ok=True)
    return result


def verify_gguf(path: Path, label: str, q: GGUFQuant, reference: Reference, *,
                threads: int | None = None) -> VerificationReport:
    from edgekit.runtimes.llamacpp import LlamaCppSession

    n_ctx = max(len(ids) for ids in [*reference.logit_ids, reference.ppl_ids]) + 8
    with LlamaCppSession(path, n_ctx=max(n_ctx, 64), n_batch=max(n_ctx, 64), n_threads=threads,
                         logits_all=True) as s:
        return verify(reference, label, q.precision, s.tokenize, s.logits)
