"""What every format's conversion shares: open and check the inputs, verify lazily, record.

A format module supplies only what is its own (how to write an artifact, how to open it
for verification); the order -- validate the source and adapter before writing anything,
compute the transformers reference once and only when first needed, update the manifest
right after each rename -- lives here so GGUF, ONNX and GPTQ cannot drift apart.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, QualityGateError, VerificationError
from edgekit.fsutil import check_output_lock, clean_stale_temps, ensure_writable_dir, sha256_file
from edgekit.manifest import MANIFEST_NAME, ArtifactEntry, Manifest, open_or_new
from edgekit.progress import ProgressFn, StepTimer, report

from .artifact_weights import ArtifactWeights
from .lora import LoraAdapter
from .quality import QualityReport, QualitySettings, ScoreFn, score_artifact
from .reference import SourceReference
from .source import SourceModel, open_source
from .verify import LogitsFn, OwnWeights, TokenizeFn, VerificationReport, own_weights, verify

log = logging.getLogger(__name__)


@dataclass
class Conversion:
    """The result of one ``convert`` call, whatever the format."""

    out_dir: Path
    manifest: Manifest
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    reports: list[VerificationReport] = field(default_factory=list)
    quality: list[QualityReport] = field(default_factory=list)
    # artifacts a quality gate refused (not written): {"artifact", "quant", "reasons", "verification"}
    refused: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # called before the manifest is first saved: fills in what was still being computed (the
    # weights' sha256, see Inputs.source_info)
    complete_source: Callable[[], object] | None = field(default=None, repr=False)
    timer: StepTimer = field(default_factory=StepTimer)


@dataclass
class Inputs:
    model_dir: Path
    source: SourceModel
    arch: str  # edgekit's architecture name (converters.gguf.archs: one spec per family, every format)
    adapter: LoraAdapter | None
    adapter_dir: Path | None
    partial_source_info: dict[str, Any]  # source_info, its weights_sha256 possibly still None
    quality: QualitySettings = field(default_factory=QualitySettings)
    # the transformers reference, computed on first use and shared by every format converted
    # from these inputs (one model load and one pass over the evaluation set per run)
    reference: SourceReference | None = None
    digest: WeightsDigest | None = field(default=None, repr=False)

    @property
    def source_info(self) -> dict[str, Any]:
        """What the manifest records of the source, the weights' sha256 included (waits for it)."""
        if self.digest is not None:
            self.partial_source_info["weights_sha256"] = self.digest.result()
            self.digest = None
        return self.partial_source_info


class WeightsDigest:
    """The sha256 of the source weights, computed on a thread started when the inputs open.

    Hashing reads every weight byte (~0.7 s per GB here, 9 s for a 7B in bf16); the conversion
    streams the same files meanwhile (hashlib, reads, numpy casts and writes all release the
    GIL), so the hash costs a second core instead of wall time. Only comparing against an
    existing manifest, and saving one, wait for it."""

    def __init__(self, source: SourceModel) -> None:
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source,), name="edgekit-weights-sha256",
                                        daemon=True)
        self._thread.start()

    def _run(self, source: SourceModel) -> None:
        try:
            self._value = source.weights_sha256()
        except BaseException as e:  # re-raised where the digest is needed
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def open_inputs(model_dir: Path, adapter_dir: Path | None, timer: StepTimer, prepared: Inputs | None = None,
                quality: QualitySettings | None = None, fmt: str | None = None) -> Inputs:
    """Validate the source, its architecture (for ``fmt``, when given) and the adapter before
    anything is written.

    ``prepared``: inputs another format of the same run already opened (and hashed) are reused."""
    from .gguf.archs import spec_for

    if prepared is not None:
        if fmt is not None:
            spec_for(prepared.source.config, fmt)
        if (prepared.model_dir.resolve(), prepared.adapter_dir) != (Path(model_dir).resolve(), adapter_dir):
            raise InputError(f"prepared= holds the inputs of {prepared.model_dir} (adapter {prepared.adapter_dir}), "
                             f"not of {model_dir} (adapter {adapter_dir})",
                             hint="pass the inputs open_inputs() returned for this model, or leave prepared= out")
        return prepared

    with timer.step("read source"):
        source = open_source(model_dir)
        spec = spec_for(source.config, fmt)  # the architecture specs say which formats convert it
        adapter = LoraAdapter(adapter_dir) if adapter_dir is not None else None
        if adapter is not None:
            adapter.check_against(source)
        source_info = {
            "path": str(model_dir.resolve()), "architecture": source.architecture, "arch": spec.name,
            "weights_sha256": None, "weights_bytes": source.weights_bytes,  # sha256: WeightsDigest
            "adapter": None if adapter is None else {"path": str(adapter.path.resolve()),
                                                     "sha256": sha256_file(adapter.file.path)},
        }
    return Inputs(model_dir, source, spec.name, adapter, adapter_dir, source_info, quality or QualitySettings(),
                  digest=WeightsDigest(source))


def start_output(out_dir: Path, inputs: Inputs, timer: StepTimer) -> Conversion:
    ensure_writable_dir(out_dir)
    check_output_lock(out_dir)  # another live process writing here: refused
    clean_stale_temps(out_dir)  # safe: no other process writes here now
    if (out_dir / MANIFEST_NAME).is_file():  # compared with this source's weights: needs the digest now
        manifest = open_or_new(out_dir, inputs.source_info)
    else:  # the same dict: the digest lands in it before the manifest is first saved (record)
        manifest = Manifest(source=inputs.partial_source_info)
    return Conversion(out_dir, manifest, timer=timer, complete_source=lambda: inputs.source_info)


class Verifier:
    """Correctness (refuse what is broken) then quality (measure what is lossy) for each artifact.

    The transformers reference is loaded once per inputs, on first use, and scores the
    evaluation set once for every artifact of the run."""

    def __init__(self, inputs: Inputs, result: Conversion, progress: ProgressFn | None,
                 threads: int | None = None) -> None:
        self.inputs, self.result, self.progress, self.threads = inputs, result, progress, threads

    @property
    def reference(self) -> SourceReference:
        if self.inputs.reference is None:
            with self.result.timer.step("reference (transformers)"):
                report(self.progress, "reference", "loading the source model in transformers")
                self.inputs.reference = SourceReference(
                    self.inputs.model_dir, self.inputs.source, self.inputs.adapter, self.inputs.adapter_dir,
                    self.inputs.quality.eval, threads=self.threads, progress=self.progress)
                self.inputs.reference.scores  # noqa: B018 -- the one pass over the evaluation set, timed here
        return self.inputs.reference

    def expected(self, name: str) -> Any:
        """The source tensor an artifact's ``name`` must match (LoRA merged)."""
        data = self.inputs.source.float32(name)
        return self.inputs.adapter.merge(name, data) if self.inputs.adapter is not None else data

    def own_weights(self, quant: str, weights: ArtifactWeights) -> OwnWeights:
        """The torch half of the correctness check; call it before the artifact's runtime is
        opened, and pass the result to :meth:`check`, so that the two never hold memory at once."""
        with self.result.timer.step(f"verify {quant}: own weights"):
            return own_weights(self.reference, weights, self.expected)

    def check(self, label: str, quant: str, precision: str, tokenize: TokenizeFn, logits: LogitsFn,
              score: ScoreFn, weights: ArtifactWeights | OwnWeights, *, imatrix: bool = False,
              is_eog: Callable[[int], bool] | None = None) -> dict[str, Any]:
        """Verify one artifact and measure its quality.

        Raises VerificationError (broken: not kept, the run stops) or QualityGateError (over
        the user's gate: not kept, the caller goes on with the next artifact). ``is_eog``: the
        runtime's end-of-generation test, for the stop-token check."""
        ref = self.reference
        with self.result.timer.step(f"verify {quant}"):
            own = own_weights(ref, weights, self.expected) if isinstance(weights, ArtifactWeights) else weights
            rep = verify(ref, label, precision, tokenize, logits, own, is_eog=is_eog)
        self.result.reports.append(rep)
        if not rep.passed:
            raise VerificationError(label, rep.failures[0].split(":")[0], "; ".join(rep.failures))
        with self.result.timer.step(f"quality {quant}"):
            report(self.progress, f"quality {quant}", f"{ref.windows.n_scored} evaluation tokens")
            metrics = score_artifact(ref.scores, ref.windows, score)
        gate = self.inputs.quality.gate
        q = QualityReport(metrics, ref.windows.describe(), gate, gate.failures(metrics),
                          metrics.warning(label, quant, imatrix))
        self.result.quality.append(q)
        m = rep.metrics
        assert m is not None
        report(self.progress, f"verify {quant}",
               f"correct (rel. error {m.rel_err:.2g} vs its own weights); quality: KL {metrics.mean_kl:.3g}, "
               f"top-1 {metrics.top1 * 100:.1f}%, ppl {metrics.ppl_delta_pct:+.2f}%")
        if q.warning:
            self.result.warnings.append(q.warning)
            self._warn(q.warning)
        out = {"passed": True, **q.to_dict(), "correctness": rep.to_dict()}
        if q.gate_failures:
            raise QualityGateError(label, q.gate_failures, out)
        return out

    def _warn(self, text: str) -> None:
        """A progress line for the CLI (which repeats it under the table); a log warning for API callers."""
        if self.progress is not None:
            report(self.progress, "warning", text)
        else:
            log.warning("%s", text)

    def refuse(self, err: QualityGateError, quant: str) -> None:
        """Record an artifact the gate refused; the run goes on."""
        self._warn(err.message)
        self.result.refused.append({"artifact": err.artifact, "quant": quant, "reasons": err.reasons,
                                    "verification": err.verification})


def record(result: Conversion, entry: ArtifactEntry) -> None:
    """Add an artifact right after its rename: the manifest never lists a missing file."""
    if result.complete_source is not None:
        result.complete_source()
    result.manifest.upsert(entry)
    result.manifest.save(result.out_dir)
    result.artifacts.append(entry)
