"""What every format's conversion shares: open and check the inputs, verify lazily, record.

A format module supplies only what is its own (how to write an artifact, how to open it
for verification); the order -- validate the source and adapter before writing anything,
compute the transformers reference once and only when first needed, update the manifest
right after each rename -- lives here so GGUF, ONNX and GPTQ cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import VerificationError
from edgekit.fsutil import clean_stale_temps, ensure_writable_dir, sha256_file
from edgekit.manifest import ArtifactEntry, Manifest, open_or_new
from edgekit.progress import ProgressFn, StepTimer, report

from .lora import LoraAdapter
from .source import SourceModel, open_source
from .verify import LogitsFn, Precision, Reference, TokenizeFn, VerificationReport, verify


@dataclass
class Conversion:
    """The result of one ``convert`` call, whatever the format."""

    out_dir: Path
    manifest: Manifest
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    reports: list[VerificationReport] = field(default_factory=list)
    timer: StepTimer = field(default_factory=StepTimer)


@dataclass
class Inputs:
    model_dir: Path
    source: SourceModel
    arch: str  # edgekit's architecture name (the GGUF arch table is the supported list)
    adapter: LoraAdapter | None
    adapter_dir: Path | None
    source_info: dict[str, Any]
    # the transformers reference, computed on first use and shared by every format converted
    # from these inputs (one model load and one set of probe forwards per run)
    reference: Reference | None = None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def open_inputs(model_dir: Path, adapter_dir: Path | None, timer: StepTimer, prepared: Inputs | None = None) -> Inputs:
    """Validate the source, its architecture and the adapter before anything is written.

    ``prepared``: inputs another format of the same run already opened (and hashed) are reused."""
    from .gguf.archs import spec_for

    if prepared is not None:
        if (prepared.model_dir.resolve(), prepared.adapter_dir) != (Path(model_dir).resolve(), adapter_dir):
            raise ValueError("prepared inputs belong to another model or adapter")
        return prepared

    with timer.step("read source"):
        source = open_source(model_dir)
        spec = spec_for(source.config)  # one supported-architecture list for every format
        adapter = LoraAdapter(adapter_dir) if adapter_dir is not None else None
        if adapter is not None:
            adapter.check_against(source)
        source_info = {
            "path": str(model_dir.resolve()), "architecture": source.architecture, "arch": spec.name,
            "weights_sha256": source.weights_sha256(), "weights_bytes": source.weights_bytes,
            "adapter": None if adapter is None else {"path": str(adapter.path.resolve()),
                                                     "sha256": sha256_file(adapter.file.path)},
        }
    return Inputs(model_dir, source, spec.name, adapter, adapter_dir, source_info)


def start_output(out_dir: Path, inputs: Inputs, timer: StepTimer) -> Conversion:
    ensure_writable_dir(out_dir)
    clean_stale_temps(out_dir)
    return Conversion(out_dir, open_or_new(out_dir, inputs.source_info), timer=timer)


class Verifier:
    """Runs the shared verifier; the transformers reference is computed once per inputs, on first use."""

    def __init__(self, inputs: Inputs, result: Conversion, progress: ProgressFn | None) -> None:
        self.inputs, self.result, self.progress = inputs, result, progress

    @property
    def reference(self) -> Reference:
        if self.inputs.reference is None:
            with self.result.timer.step("reference (transformers)"):
                report(self.progress, "reference", "running the source model in transformers")
                self.inputs.reference = Reference(self.inputs.model_dir, self.inputs.adapter_dir)
        return self.inputs.reference

    def check(self, label: str, quant: str, precision: Precision, tokenize: TokenizeFn,
              logits: LogitsFn) -> dict[str, Any]:
        """Verify one artifact; raise VerificationError (artifact not kept) when it fails."""
        ref = self.reference
        with self.result.timer.step(f"verify {quant}"):
            rep = verify(ref, label, precision, tokenize, logits)
        self.result.reports.append(rep)
        if not rep.passed:
            raise VerificationError(label, rep.failures[0].split(":")[0], "; ".join(rep.failures))
        m = rep.metrics
        assert m is not None
        report(self.progress, f"verify {quant}",
               f"pass (KL {m.mean_kl:.2e}, top-1 {m.top1:.3f}, ppl {m.ppl:.3f} vs {m.ppl_ref:.3f})")
        return rep.to_dict()


def record(result: Conversion, entry: ArtifactEntry) -> None:
    """Add an artifact right after its rename: the manifest never lists a missing file."""
    result.manifest.upsert(entry)
    result.manifest.save(result.out_dir)
    result.artifacts.append(entry)
