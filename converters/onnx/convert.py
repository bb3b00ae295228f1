"""``edgekit convert --to onnx``: source -> ONNX Runtime GenAI models (KV cache), verified.

One sub-directory per variant (``<name>-onnx-<quant>/``: ``model.onnx``, its external
data, ``genai_config.json``, tokenizer files). Each is built into a temporary directory,
verified through ONNX Runtime on the CPU against transformers with the same probes and
thresholds as GGUF, and only then renamed into place.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import QualityGateError
from edgekit.fsutil import artifact_digest, atomic_output_dir
from edgekit.manifest import ArtifactEntry
from edgekit.progress import ProgressFn, StepTimer, report

from ..merged_source import write_merged_source
from ..pipeline import Conversion, Inputs, Verifier, open_inputs, record, slug, start_output
from ..quality import QualitySettings
from ..stop_tokens import declared_stops, tokenizer_index, write_genai_stops
from .builder import check_builder_available, run_builder
from .quants import (
    DEFAULT_BLOCK_SIZE,
    Int4Algo,
    OnnxQuant,
    Target,
    check_block_size,
    parse_algo,
    parse_onnx_quants,
    parse_target,
)

log = logging.getLogger(__name__)


# Builder nodes a GPTQ checkpoint leaves in float (GPTQ quantizes the decoder's linear
# layers only): excluded from the builder's own int4 pass so the ONNX model is the GPTQ
# model. Measured on the demo model: ONNX-from-GPTQ mean KL 0.0275 with the builder
# re-quantizing the tied embedding/LM head vs the GPTQ checkpoint's 0.0121; with them
# excluded, ONNX Runtime matches the dequantized checkpoint to 6.5e-4 (2e-12 at fp32
# activations, accuracy_level=1).
GPTQ_FLOAT_NODES = "/lm_head/MatMul,/model/embed_tokens/Gather"


def is_gptq_checkpoint(model_dir: Path) -> bool:
    from ..gptq.checkpoint import gptq_quantization_config
    from ..source import load_config

    return gptq_quantization_config(load_config(model_dir)) is not None


def builder_options(q: OnnxQuant, *, block_size: int, algo: Int4Algo, tied: bool,
                    from_gptq: bool = False) -> dict[str, str]:
    opts: dict[str, str] = {}
    if q.weight_only:
        opts.update(block_size=str(block_size), algo_config=algo.value)
    if from_gptq:
        opts["nodes_to_exclude"] = GPTQ_FLOAT_NODES  # the head stays float: no mixed precision to ask for
        return opts
    if q.mixed_precision:
        opts["matmul_mixed_precision"] = q.mixed_precision
    if tied:
        # Tied embeddings: one copy of the matrix for the embedding lookup and the LM head
        # instead of two (halves the file for vocabulary-heavy models); with int4 the shared
        # matrix is the int8 head (see quants.QUANTS), as llama.cpp's token_embd.
        opts["shared_embeddings"] = "true"
    return opts


def convert_onnx(
    model_dir: Path,
    out_dir: Path,
    quants: str | list[str] = "fp32",
    *,
    adapter_dir: Path | None = None,
    verify_artifacts: bool = True,
    name: str | None = None,
    threads: int | None = None,
    target: str | Target = Target.CPU,
    block_size: int = DEFAULT_BLOCK_SIZE,
    int4_algo: str | Int4Algo = Int4Algo.K_QUANT,
    progress: ProgressFn | None = None,
    timer: StepTimer | None = None,
    prepared: Inputs | None = None,
    builder_extra: dict[str, str] | None = None,
    source_override: Path | None = None,
    quality: QualitySettings | None = None,
) -> Conversion:
    """Export, verify and record ONNX variants.

    ``source_override`` feeds the builder another checkpoint of the same model (a GPTQ
    checkpoint: its calibrated int4 weights are carried into MatMulNBits) while the
    reference stays the original source; ``builder_extra`` passes raw builder options
    (tests use it to build a deliberately broken model and show verification catches it).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted = parse_onnx_quants(quants)
    tgt, algo, block_size = parse_target(target), parse_algo(int4_algo), check_block_size(block_size)
    check_builder_available()
    timer = timer or StepTimer()
    inputs = open_inputs(model_dir, adapter_dir, timer, prepared, quality, fmt="onnx")
    result = start_output(out_dir, inputs, timer)
    verifier = Verifier(inputs, result, progress, threads)
    stem = slug(name or model_dir.resolve().name)
    cfg = inputs.source.config
    n_layers = int(cfg.get("num_hidden_layers") or cfg.get("text_config", {}).get("num_hidden_layers") or 0)
    tied = bool(cfg.get("tie_word_embeddings", False))
    report(progress, "source", f"{inputs.arch}, target {tgt.value}{' + LoRA' if inputs.adapter else ''}")

    from_gptq = source_override is not None and is_gptq_checkpoint(Path(source_override))
    with tempfile.TemporaryDirectory(prefix=".edgekit-onnx-", dir=out_dir) as scratch:
        src = Path(source_override) if source_override is not None else model_dir
        if inputs.adapter is not None and source_override is None:
            with timer.step("merge LoRA"):
                report(progress, "merge LoRA", "writing merged weights for the ONNX builder")
                src = write_merged_source(inputs.source, inputs.adapter, Path(scratch) / "merged")
        for q in wanted:
            # from GPTQ: its own manifest key, so it sits beside a plain int4 build
            label = f"{q.name}-gptq" if from_gptq else q.name
            final = out_dir / f"{stem}-onnx-{q.name}"
            ep = q.builder_ep[tgt]
            opts = {**builder_options(q, block_size=block_size, algo=algo, tied=tied, from_gptq=from_gptq),
                    **(builder_extra or {})}
            t0 = time.perf_counter()
            try:
                with atomic_output_dir(final) as tmp:
                    with timer.step(f"build {q.name}"):
                        report(progress, f"build {q.name}", f"ONNX Runtime GenAI builder (-p {q.builder_precision} "
                                                           f"-e {ep}{', block ' + str(block_size) if 'block_size' in opts else ''})")
                        run_builder(src, tmp, precision=q.builder_precision, ep=ep, cache_dir=Path(scratch) / "cache",
                                    extra_options=opts, n_layers=n_layers, progress=progress, label=f"build {q.name}")
                        # the builder lists generation_config's eos ids only: add the template's end of turn
                        write_genai_stops(tmp, declared_stops(model_dir, tokenizer_index(tmp)))
                    verification = None
                    if verify_artifacts:
                        verification = verify_onnx(tmp, final.name, q, verifier, threads=threads)
                    size, digest = artifact_digest(tmp)
                    extra: dict[str, Any] = {"target": tgt.value, "builder_ep": ep, "verified_on": "cpu",
                                             "builder_options": opts, **_versions()}
                    if source_override is not None:
                        extra["built_from"] = str(Path(source_override).resolve())
                    entry = ArtifactEntry(file=final.name, format="onnx", quant=label, precision=q.precision.value,
                                          size_bytes=size, sha256=digest, verification=verification,
                                          seconds=round(time.perf_counter() - t0, 3), extra=extra)
            except QualityGateError as e:
                verifier.refuse(e, label)
                continue
            record(result, entry)
    return result


def verify_onnx(path: Path, label: str, q: OnnxQuant, verifier: Verifier, *, threads: int | None = None) -> dict[str, Any]:
    """Correctness against the model's own (dequantized) matrices, then quality on the evaluation set."""
    from edgekit.runtimes.onnx import OnnxSession

    from .dequant import OnnxWeights

    _check_layer_pattern(path, label, verifier.inputs.source.config)
    own = verifier.own_weights(q.name, OnnxWeights(path, verifier.inputs.source).weights())  # before ORT loads it
    with OnnxSession(path, n_ctx=0, n_threads=threads, device="cpu") as s:
        def score(ids: list[int], start: int) -> Iterator[np.ndarray]:
            yield s.logits(ids)[start:]

        return verifier.check(label, q.name, q.precision, s.tokenize, s.logits, score, own, is_eog=s.is_end)


def _check_layer_pattern(path: Path, label: str, config: dict[str, Any]) -> None:
    """A hybrid model's genai_config.json names which layers carry a convolution or recurrent
    state instead of a KV cache; ONNX Runtime GenAI feeds the states by it. A pattern that is
    not the source's would run the wrong layers' states (or fail mid-generation): refused."""
    from edgekit.errors import VerificationError
    from edgekit.runtimes.onnx_check import read_genai_config, state_layers

    built = read_genai_config(path)["model"]["decoder"].get("layer_types")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    source = text.get("layer_types") if isinstance(text, dict) else None
    if not isinstance(built, list):
        return
    if not isinstance(source, list) or state_layers(built) != state_layers(source):
        raise VerificationError(label, "layer pattern",
                                f"genai_config.json runs layers {state_layers(built)} as state layers, the source "
                                f"{state_layers(source) if isinstance(source, list) else 'has no layer_types'}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime-genai", "onnxruntime", "onnxruntime-genai-cuda", "onnxruntime-gpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def check_onnx(model_dir: Path, path: Path, *, adapter_dir: Path | None = None, quality: QualitySettings | None = None,
               threads: int | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Verify an existing ONNX Runtime GenAI model directory against the model it was converted from."""
    from edgekit.manifest import Manifest
    from edgekit.runtimes.onnx_check import check_onnx_dir

    from .quants import QUANTS

    path = Path(path)
    check_onnx_dir(path)  # untrusted: config, graph and external data checked before ONNX Runtime opens it
    inputs = open_inputs(Path(model_dir), adapter_dir, StepTimer(), quality=quality)
    result = Conversion(path.parent, Manifest(source=inputs.source_info))
    verifier = Verifier(inputs, result, progress, threads)
    q = next((x for x in QUANTS if path.name.endswith(f"-{x.name}")), QUANTS[0])
    return verify_onnx(path, path.name, q, verifier, threads=threads)
