"""``edgekit convert --to gguf``: source -> float GGUF -> llama.cpp quants -> verified artifacts.

Every artifact is written under a temporary name in OUT_DIR and renamed only after it
passed verification, so an interrupted or failed run leaves no partial ``.gguf`` behind.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgekit.fsutil import atomic_output, sha256_file, temp_path_for
from edgekit.manifest import ArtifactEntry
from edgekit.progress import ProgressFn, StepTimer, report

from ..pipeline import Conversion, Inputs, Verifier, open_inputs, record, slug, start_output
from .archs import ArchSpec, spec_for
from .quantize import quantize_file
from .quants import FLOAT_QUANTS, GGUFQuant, parse_quants
from .writer import write_float_gguf

log = logging.getLogger(__name__)

GGUFConversion = Conversion  # kept for callers of 0.1


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
    prepared: Inputs | None = None,
) -> Conversion:
    """Convert, quantize and verify. ``spec``/``pre_override`` exist to test the verifier."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted: list[GGUFQuant] = parse_quants(quants)
    timer = timer or StepTimer()
    inputs = open_inputs(model_dir, adapter_dir, timer, prepared)
    source, adapter = inputs.source, inputs.adapter
    spec = spec or spec_for(source.config)
    result = start_output(out_dir, inputs, timer)
    verifier = Verifier(inputs, result, progress)
    stem = slug(name or model_dir.resolve().name)
    report(progress, "source", f"{spec.name}, {len(source.names())} tensors, "
                               f"{source.weights_bytes / 2**20:.1f} MiB{' + LoRA' if adapter else ''}")

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
                    verification = verify_gguf(tmp, final.name, q, verifier, threads=threads)
                entry = ArtifactEntry(file=final.name, format="gguf", quant=q.name, precision=q.precision.value,
                                      size_bytes=tmp.stat().st_size, sha256=sha256_file(tmp),
                                      verification=verification, seconds=round(time.perf_counter() - t0, 3))
            if q is base_q:
                base_path = final
            record(result, entry)
    finally:
        if base_tmp is not None:
            base_tmp.unlink(missing_ok=True)
    return result


def verify_gguf(path: Path, label: str, q: GGUFQuant, verifier: Verifier, *,
                threads: int | None = None) -> dict[str, Any]:
    from edgekit.runtimes.llamacpp import LlamaCppSession

    ref = verifier.reference
    n_ctx = max(64, max(len(ids) for ids in [*ref.logit_ids, ref.ppl_ids]) + 8)
    with LlamaCppSession(path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, logits_all=True) as s:
        return verifier.check(label, q.name, q.precision, s.tokenize, s.logits)
