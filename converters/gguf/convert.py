"""``edgekit convert --to gguf``: source -> float GGUF -> llama.cpp quants -> verified artifacts.

Every artifact is written under a temporary name in OUT_DIR and renamed only after it
passed verification, so an interrupted or failed run leaves no partial ``.gguf`` behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import QualityGateError
from edgekit.fsutil import atomic_output, sha256_file, temp_path_for
from edgekit.manifest import ArtifactEntry
from edgekit.progress import ProgressFn, StepTimer, report

from ..gptq.calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from ..pipeline import Conversion, Inputs, Verifier, open_inputs, record, slug, start_output
from ..quality import QualitySettings
from ..source import SourceModel
from .archs import ArchSpec, spec_for
from .dequant import GGUFWeights
from .fit import FitPlan, check_feasible, fit_placeholder, plan_fit, resolve_fit
from .imatrix import IMATRIX_FILE, Imatrix, check_against, compute_imatrix, matrix_widths, read_imatrix
from .inspect import read_gguf
from .quantize import artifact_types, imatrix_needed, quantize_file
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
    quality: QualitySettings | None = None,
    imatrix: bool | Path | None = None,
    calibration: Path | None = None,
    imatrix_samples: int = DEFAULT_SAMPLES,
    imatrix_seq_len: int = DEFAULT_SEQ_LEN,
    tensor_types: Sequence[tuple[str, str]] = (),
    fit_size: str | int | None = None,
    fit_profile: str | None = None,
    fit_ctx: int | None = None,
    fit_method: str = "kl",
) -> Conversion:
    """Convert, quantize and verify. ``spec``/``pre_override`` exist to test the verifier.

    ``imatrix``: True computes an importance matrix from the model on ``calibration`` (the
    packaged calibration mix by default; ``imatrix_samples`` windows of ``imatrix_seq_len``
    tokens at most) and writes it to ``OUT_DIR/imatrix.gguf``; a path uses
    that file. ``tensor_types``: (regex, ggml type) pairs llama.cpp applies per tensor.
    ``fit_size`` (bytes or "1.2GB") or ``fit_profile`` (+ ``fit_ctx``) adds one artifact, a mix of
    types per tensor class chosen for the least loss within that budget (:mod:`.fit`)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted: list[GGUFQuant] = parse_quants(quants) if quants else []
    if not imatrix:
        for q in wanted:
            if q.needs_imatrix:
                raise imatrix_needed(q.name)  # before anything is read or written
    timer = timer or StepTimer()
    inputs = open_inputs(model_dir, adapter_dir, timer, prepared, quality, fmt="gguf")
    source, adapter = inputs.source, inputs.adapter
    spec = spec or spec_for(source.config)
    fit = resolve_fit(source.config, fit_size, fit_profile, fit_ctx, fit_method) \
        if fit_size is not None or fit_profile is not None else None
    if fit is not None:
        check_feasible(fit, source.config)  # before anything is written
    if not imatrix:
        _check_shape_imatrix(wanted, source.config)
    if not wanted and fit is None:
        wanted = parse_quants(quants)  # the one-line error for an empty list
    given = _given_imatrix(imatrix, inputs, spec, wanted, fit is not None)  # a file is checked before anything is written
    result = start_output(out_dir, inputs, timer)
    verifier = Verifier(inputs, result, progress, threads)
    stem = slug(name or model_dir.resolve().name)
    report(progress, "source", f"{spec.name}, {len(source.names())} tensors, "
                               f"{source.weights_bytes / 2**20:.1f} MiB{' + LoRA' if adapter else ''}")
    if spec.left_out:  # a multimodal checkpoint: say once what the GGUF does not hold
        towers = sum(1 for n in source.names() if n.startswith(spec.left_out))
        note = f"{source.architecture}: the language model is converted; the vision tower ({towers} tensors) is left out"
        log.info("%s", note)
        report(progress, "note", note)

    im_values, im_record = given or _computed_imatrix(imatrix, calibration, (imatrix_samples, imatrix_seq_len),
                                                      inputs, spec, out_dir, wanted, timer, progress, threads,
                                                      fit is not None)
    base_type = _base_type(source.dtype_tags())
    # The lossless float type, when requested, is written first and doubles as the
    # quantization base; otherwise a temporary base is written and deleted at the end.
    base_q = next((q for q in wanted if q.name == base_type), None)
    ordered = ([base_q] if base_q else []) + [q for q in wanted if q is not base_q]
    base_path: Path | None = None
    base_tmp: Path | None = None

    def write(q_name: str, path: Path, note: str) -> str:
        """Write a float GGUF; its sha256, hashed while writing."""
        with timer.step(f"write {q_name}{' (base for quantization)' if note else ''}"):
            report(progress, f"write {q_name}", f"streaming tensors{note}")
            return write_float_gguf(source, path, spec=spec, out_type=q_name, adapter=adapter, name=name,
                                    pre_override=pre_override, progress=progress, compare_tokenizer=verify_artifacts)

    def quantize(src: Path, dst: Path, q: GGUFQuant, types: Sequence[tuple[str, str]]) -> None:
        quantize_file(src, dst, q, threads=threads, imatrix=im_values, tensor_types=types)

    try:
        jobs: list[tuple[GGUFQuant, Sequence[tuple[str, str]]]] = [(q, tensor_types) for q in ordered]
        if fit is not None:
            jobs.append((fit_placeholder(fit), tensor_types))
        for q, types in jobs:
            if q.name not in FLOAT_QUANTS and base_path is None:
                base_tmp = base_path = temp_path_for(out_dir / f"{stem}-{base_type}.gguf")
                write(base_type, base_tmp, " (base for quantization)")
            plan: FitPlan | None = None
            if fit is not None and q.name == fit_placeholder(fit).name:
                assert base_path is not None
                with timer.step("fit"):
                    report(progress, "fit", f"{fit.basis}: {fit.budget_bytes / 1e9:.3g} GB for the file")
                    text = _fit_text(model_dir, calibration) if fit.method == "kl" else ""
                    plan = plan_fit(base_path, fit, out_dir, quantize, calibration=text, imatrix=im_values,
                                    threads=threads, progress=progress)
                q = plan.quant()
                types = [*tensor_types, *plan.tensor_types]  # the user's --tensor-type patterns match first
            final = out_dir / f"{stem}-{q.name}.gguf"
            t0 = time.perf_counter()
            try:
                with atomic_output(final) as tmp:
                    digest: str | None = None
                    if q.name in FLOAT_QUANTS:
                        digest = write(q.name, tmp, "")
                    else:
                        assert base_path is not None
                        with timer.step(f"quantize {q.name}"):
                            report(progress, f"quantize {q.name}", "llama.cpp quantizer")
                            quantize(base_path, tmp, q, types)
                    # read from the file; warns on fallbacks (a fitted mix has none: its rungs divide the rows)
                    info = artifact_types(tmp, q, final.name, fallbacks=plan is None)
                    if q.name not in FLOAT_QUANTS:
                        info.update({"imatrix": im_record} if im_record else {})
                        info.update({"tensor_type_overrides": [f"{p}={t}" for p, t in tensor_types]}
                                    if tensor_types else {})
                    if plan is not None:
                        info["fit"] = {**plan.to_dict(), "file_bytes": tmp.stat().st_size,
                                       "tensor_types": {t.name: t.type for t in read_gguf(tmp).tensors}}
                    verification = None
                    if verify_artifacts:
                        verification = verify_gguf(tmp, final.name, q, verifier, source, spec, threads=threads,
                                                   imatrix=im_values is not None)
                    entry = ArtifactEntry(file=final.name, format="gguf", quant=q.name, precision=q.precision.value,
                                          size_bytes=tmp.stat().st_size, sha256=digest or sha256_file(tmp),
                                          verification=verification, seconds=round(time.perf_counter() - t0, 3),
                                          extra=info)
            except QualityGateError as e:
                verifier.refuse(e, q.name)
                continue
            if q is base_q:
                base_path = final
            record(result, entry)
    finally:
        if base_tmp is not None:
            base_tmp.unlink(missing_ok=True)
    return result


ImatrixUse = tuple[dict[str, np.ndarray] | None, dict[str, Any] | None]  # (per-channel means, manifest record)


def _given_imatrix(imatrix: bool | Path | None, inputs: Inputs, spec: ArchSpec,
                   wanted: list[GGUFQuant], fitting: bool = False) -> ImatrixUse | None:
    """An imatrix file, read and checked against the model's tensor names and widths."""
    if imatrix is None or isinstance(imatrix, bool) or (all(q.name in FLOAT_QUANTS for q in wanted)
                                                        and not fitting):
        return None
    widths = matrix_widths(inputs.source, spec)
    im = read_imatrix(Path(imatrix))
    check_against(im, widths, str(imatrix))
    return im.values(), {"file": str(imatrix), "computed": False, **im.describe(), "tensors_of_model": len(widths)}


def _computed_imatrix(imatrix: bool | Path | None, calibration: Path | None, window: tuple[int, int],
                      inputs: Inputs, spec: ArchSpec,
                      out_dir: Path, wanted: list[GGUFQuant], timer: StepTimer, progress: ProgressFn | None,
                      threads: int | None, fitting: bool = False) -> ImatrixUse:
    """imatrix=True: computed from the source model on the calibration text, kept as OUT_DIR/imatrix.gguf."""
    if imatrix is not True or (all(q.name in FLOAT_QUANTS for q in wanted) and not fitting):
        return None, None
    widths = matrix_widths(inputs.source, spec)
    with timer.step("imatrix"):
        im: Imatrix = compute_imatrix(inputs.model_dir, inputs.source, spec, adapter=inputs.adapter,
                                      calibration=calibration, samples=window[0], seq_len=window[1],
                                      threads=threads, progress=progress)
        check_against(im, widths, "computed from the model")  # edgekit's own names: a bug if not
        with atomic_output(out_dir / IMATRIX_FILE) as tmp:
            im.write(tmp)
    return im.values(), {"file": IMATRIX_FILE, "computed": True, **im.describe(), "tensors_of_model": len(widths)}


def _check_shape_imatrix(wanted: list[GGUFQuant], config: dict[str, Any]) -> None:
    """A type llama.cpp refuses without an importance matrix for this model's shapes (iq3_xs puts
    IQ3_XXS on attn_q/attn_k when their rows split into 256-blocks): the one-line error now,
    not "failed to quantize" after the float file is written."""
    from edgekit.profiles.llama_types import requires_imatrix
    from edgekit.profiles.shapes import gguf_tensor_types, model_shapes

    shapes = None
    for q in wanted:
        if q.name in FLOAT_QUANTS or q.needs_imatrix:
            continue
        shapes = shapes or model_shapes(config)
        if requires_imatrix(gguf_tensor_types(shapes, q.name), q.name.upper()):
            raise imatrix_needed(q.name)


def _fit_text(model_dir: Path, calibration: Path | None) -> str:
    """The calibration text the kl fit scores on (chat JSONL rendered through the template)."""
    from transformers import AutoTokenizer

    from ..textsets import calibration_texts

    return calibration_texts(calibration, AutoTokenizer.from_pretrained(model_dir)).text()


def verify_gguf(path: Path, label: str, q: GGUFQuant, verifier: Verifier, source: SourceModel, spec: ArchSpec,
                *, threads: int | None = None, imatrix: bool = False) -> dict[str, Any]:
    """Correctness against the file's own weights (dequantized), then quality on the evaluation set."""
    from edgekit.runtimes.llamacpp import LlamaCppSession
    from edgekit.runtimes.llamacpp_score import score_positions

    ref = verifier.reference
    windows = ref.windows
    probe_len = max(len(ids) for ids in ref.logit_ids)
    # contexts sized to what is evaluated; logits only where scored (runtimes.llamacpp_score)
    n_ctx = max(64, probe_len, len(windows.windows[0]))
    own = verifier.own_weights(q.name, GGUFWeights(path, source, spec, label).weights())  # before llama.cpp maps it
    with LlamaCppSession(path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads) as s:
        def logits(ids: list[int]) -> np.ndarray:
            return np.concatenate(list(score_positions(s, ids, 0)))

        def score(ids: list[int], start: int) -> Iterator[np.ndarray]:
            return score_positions(s, ids, start)

        return verifier.check(label, q.name, q.precision, s.tokenize, logits, score, own, imatrix=imatrix,
                              is_eog=s.is_end)


def check_gguf(model_dir: Path, path: Path, *, adapter_dir: Path | None = None, quality: QualitySettings | None = None,
               threads: int | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Verify an existing GGUF (made by edgekit or not) against the model it was converted from.

    Returns the verification record a conversion would store; raises VerificationError when
    the file is broken and QualityGateError when it is over ``quality``'s gate."""
    from edgekit.manifest import Manifest

    from .quants import names_by_file_type, quant

    path = Path(path)
    summary = read_gguf(path)  # untrusted: validated before llama.cpp or gguf-py's reader maps it
    ftype = summary.metadata.get("general.file_type")
    q = quant(names_by_file_type().get(int(ftype), "f16") if isinstance(ftype, int) else "f16")
    timer = StepTimer()
    inputs = open_inputs(Path(model_dir), adapter_dir, timer, quality=quality)
    result = Conversion(path.parent, Manifest(source=inputs.source_info), timer=timer)
    verifier = Verifier(inputs, result, progress, threads)
    return verify_gguf(path, path.name, q, verifier, inputs.source, spec_for(inputs.source.config), threads=threads)
