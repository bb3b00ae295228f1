"""`edgekit recommend`: every (format, quant, runtime) a profile supports, costed and ranked.

The pick is the best quality that fits the memory budget and meets the speed floor. Quality
is the mean KL divergence to the source model (nats, lower is better): measured when the
model directory's ``edgekit.json`` has a verified artifact of that kind, else an estimate per
quant type from published figures, scaled to the types the manifest measured
(:mod:`.quality`; marked as such). Candidates tied with the best (:func:`.quality.tie_kl`:
within 2 standard errors of the measured KL, or within ``QUALITY_TIE_KL``) are treated as
equal and the fastest of them wins, so a near-lossless 8-bit model beats f16 that is twice as
slow for no visible gain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.converters.registry import Format  # the formats edgekit converts to; GPTQ is not planned for
from edgekit.errors import CorruptFileError
from edgekit.manifest import MANIFEST_NAME, Manifest, load_manifest

from .costs import GIB, Cost, estimate
from .llama_types import requires_imatrix
from .quality import QUALITY_TIE_KL, Quality, QualitySource, from_verification, nearest_key, tie_kl
from .quality import estimate as estimate_quality
from .schema import Backend, OnnxPrecision, Profile, Runtime, SourceKind
from .shapes import ModelShapes, WeightPlan, gguf_weights, model_shapes, plan_for_types, weight_plan

log = logging.getLogger(__name__)


# Default GGUF candidates: one per precision step that llama.cpp makes without an imatrix, then
# the i-quants (those whose types need an importance matrix are marked: convert with --imatrix).
GGUF_CANDIDATES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")
I_QUANT_CANDIDATES = ("iq4_xs", "iq4_nl", "iq3_m", "iq3_s", "iq3_xs", "iq3_xxs", "iq2_m", "iq2_s", "iq2_xs",
                      "iq2_xxs", "iq1_m", "iq1_s")
DEFAULT_CTX = 4096


@dataclass
class Candidate:
    format: Format
    quant: str
    runtime: Runtime
    backend: Backend
    cost: Cost
    quality: Quality
    fits: bool = False
    meets_speed: bool = True
    pareto: bool = False
    pick: bool = False
    artifact: str = ""  # file name from the manifest, when it exists
    needs_imatrix: bool = False  # llama.cpp makes these types only with an importance matrix
    types_from: str = "predicted"  # "file": sizes and speed from the artifact's real tensor types

    @property
    def label(self) -> str:
        return f"{self.format.value} {self.quant}"

    def to_dict(self) -> dict[str, Any]:
        c = self.cost
        return {
            "format": self.format.value, "quant": self.quant, "runtime": self.runtime.value,
            "backend": self.backend.value, "artifact": self.artifact or None,
            "needs_imatrix": self.needs_imatrix, "types_from": self.types_from,
            "memory": {"total_bytes": c.total_bytes, "weights_bytes": c.weights_bytes, "kv_cache_bytes": c.kv_bytes,
                       "recurrent_state_bytes": c.state_bytes,
                       "buffers_bytes": c.buffer_bytes, "runtime_overhead_bytes": c.overhead_bytes},
            "fits": self.fits, "gen_tokens_per_s": round(c.gen_tps, 2), "prompt_tokens_per_s": round(c.prompt_tps, 1),
            "meets_speed": self.meets_speed, "efficiency": {"decode": c.efficiency.decode,
                                                            "prefill": c.efficiency.prefill,
                                                            "ref": c.efficiency.ref},
            "quality": _quality_dict(self.quality),
            "pareto": self.pareto, "pick": self.pick,
        }


def _quality_dict(q: Quality) -> dict[str, Any]:
    out: dict[str, Any] = {"mean_kl": q.mean_kl, "top1": q.top1, "ppl_delta_pct": q.ppl_delta_pct,
                           "source": q.source.value, "basis": q.basis}
    if q.source is QualitySource.MEASURED:
        out.update(kl_stderr=q.kl_stderr, p99_kl=q.p99_kl, n_positions=q.n_positions, warning=q.warning)
    else:
        out["scaled_to"] = q.scaled_to
    return out


@dataclass
class Plan:
    model: str
    profile: str
    mode: str
    ctx: int
    budget_bytes: int
    min_tps: float | None
    params: int
    candidates: list[Candidate]
    pick: Candidate | None
    reason: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "profile": self.profile, "power_mode": self.mode, "ctx": self.ctx,
                "memory_budget_bytes": self.budget_bytes, "min_tokens_per_s": self.min_tps, "params": self.params,
                "pick": self.pick.to_dict() if self.pick else None, "reason": self.reason, "notes": self.notes,
                "candidates": [c.to_dict() for c in self.candidates]}


def _load_manifest(model_dir: Path) -> Manifest | None:
    """MODEL's ``edgekit.json``, or None when there is none or it cannot be read (a warning says why)."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return load_manifest(path)
    except CorruptFileError as e:
        log.warning("ignoring the manifest: %s", e)
        return None


def read_measured_quality(model_dir: Path) -> dict[tuple[Format, str], tuple[Quality, str]]:
    """Verified artifacts from ``edgekit.json``: (format, quant) -> (measured quality, file)."""
    manifest = _load_manifest(model_dir)
    if manifest is None:
        return {}
    out: dict[tuple[Format, str], tuple[Quality, str]] = {}
    for a in manifest.artifacts:
        q = from_verification(a.verification)
        if q is None:
            continue  # converted with --no-verify
        try:
            fmt = Format(a.format.lower())
        except ValueError:  # a format this edgekit does not know (compressed-tensors: a GPTQ twin)
            continue
        out[(fmt, a.quant.lower())] = (q, a.file)
    return out


@dataclass(frozen=True)
class GGUFArtifact:
    """A GGUF file the manifest lists, with the tensor types read from the file itself."""

    quant: str
    file: str
    weights: WeightPlan | None  # None: the file is gone, or its tensors are not this model's


def file_weights(shapes: ModelShapes, path: Path) -> WeightPlan | None:
    """The weights of a real GGUF file, typed tensor by tensor from its header (None when its
    tensor list is not the one the model's shapes expect: another architecture's file)."""
    from edgekit.converters.gguf.inspect import read_gguf

    rows = {t.name: t for t in read_gguf(path).tensors}
    if set(rows) != {t.name for t in shapes.tensors}:
        log.warning("%s: its tensors differ from the model's config; its sizes are predicted instead", path.name)
        return None
    return plan_for_types(shapes, {name: t.type for name, t in rows.items()})


def gguf_artifacts(model_dir: Path, shapes: ModelShapes) -> list[GGUFArtifact]:
    """Every GGUF entry of ``edgekit.json``, its real per-tensor types read from the file."""
    manifest = _load_manifest(model_dir)
    if manifest is None:
        return []
    out = []
    for a in manifest.artifacts:
        if a.format.lower() != Format.GGUF.value:
            continue
        path = model_dir / a.file
        weights = None
        if path.is_file():
            try:
                weights = file_weights(shapes, path)
            except CorruptFileError as e:
                log.warning("ignoring %s: %s", a.file, e)
        out.append(GGUFArtifact(a.quant.lower(), a.file, weights))
    return out


def gguf_weights_for(shapes: ModelShapes, quant: str) -> tuple[WeightPlan, bool]:
    """A stock type's predicted weights, and whether llama.cpp needs an importance matrix for them
    (then they are predicted as made with one: some types change with it)."""
    from edgekit.converters.gguf.quants import quant as lookup

    plain = weight_plan(shapes, quant, None, Backend.CPU)
    if not requires_imatrix(plain.types, lookup(quant).name.upper()):
        return plain, False
    return gguf_weights(shapes, quant, imatrix=True), True


def source_config_dir(model_dir: Path) -> Path:
    """MODEL itself, or for an edgekit output directory (manifest, no config.json) its source."""
    if (model_dir / "config.json").is_file():
        return model_dir
    manifest = _load_manifest(model_dir)
    src = manifest.source.get("path") if manifest is not None else None
    return Path(src) if src and (Path(src) / "config.json").is_file() else model_dir


def _candidates(profile: Profile, extra_gguf: tuple[str, ...] = ()) -> list[tuple[Format, str, Runtime, Backend,
                                                                                   OnnxPrecision | None]]:
    out: list[tuple[Format, str, Runtime, Backend, OnnxPrecision | None]] = []
    for rt in profile.runtimes:
        if rt.runtime is Runtime.LLAMA_CPP:
            out += [(Format.GGUF, q, rt.runtime, rt.backend, None)
                    for q in (*GGUF_CANDIDATES, *I_QUANT_CANDIDATES, *extra_gguf)]
        else:
            out += [(Format.ONNX, p.value, rt.runtime, rt.backend, p) for p in rt.onnx]
    return out


def _dominates(a: Candidate, b: Candidate) -> bool:
    ge = (a.quality.mean_kl <= b.quality.mean_kl and a.cost.gen_tps >= b.cost.gen_tps
          and a.cost.total_bytes <= b.cost.total_bytes)
    gt = (a.quality.mean_kl < b.quality.mean_kl or a.cost.gen_tps > b.cost.gen_tps
          or a.cost.total_bytes < b.cost.total_bytes)
    return ge and gt


def plan(model_dir: Path, profile: Profile, *, ctx: int = DEFAULT_CTX, mode: str | None = None,
         min_tps: float | None = None, max_memory_gb: float | None = None) -> Plan:
    from edgekit.converters.source import load_config
    from edgekit.errors import InputError

    if ctx < 1:
        raise InputError(f"--ctx / ctx= must be positive, got {ctx}")
    if max_memory_gb is not None and max_memory_gb <= 0:
        raise InputError(f"--max-memory / max_memory_gb= must be positive, got {max_memory_gb}")
    model_dir = Path(model_dir)
    shapes = model_shapes(load_config(source_config_dir(model_dir)))
    power = profile.mode(mode)
    usable = profile.usable_memory_gb.value
    budget = int((usable if max_memory_gb is None else min(max_memory_gb, usable)) * GIB)
    measured = read_measured_quality(model_dir)
    measured_quality = {k: q for k, (q, _) in measured.items()}
    notes: list[str] = []
    if ctx > shapes.config.max_position:
        notes.append(f"ctx {ctx} exceeds the model's max_position_embeddings ({shapes.config.max_position})")
    figures = (("bandwidth", power.bandwidth_gbs), ("usable memory", profile.usable_memory_gb))
    estimated_figures = [what for what, fig in figures if fig.source is SourceKind.ESTIMATED]
    if estimated_figures:
        notes.append(f"profile figures that are estimates, not datasheet or measured: {', '.join(estimated_figures)}")

    # GGUF files that exist are costed from their real tensor types; one of no stock type (a
    # fitted mix, "fit-1.2gb") is a candidate of its own
    files = {a.quant: a for a in gguf_artifacts(model_dir, shapes)}
    stock = set(GGUF_CANDIDATES) | set(I_QUANT_CANDIDATES)
    extra = tuple(q for q, a in files.items() if q not in stock and a.weights is not None)
    cands: list[Candidate] = []
    for fmt, q, runtime, backend, precision in _candidates(profile, extra):
        needs, types_from = False, "predicted"
        if fmt is Format.GGUF and q in files and files[q].weights is not None:
            weights, types_from = files[q].weights, "file"
        elif fmt is Format.GGUF:
            weights, needs = gguf_weights_for(shapes, q)
        else:
            weights = weight_plan(shapes, q, precision, backend)
        assert weights is not None
        cost = estimate(shapes, weights, runtime, backend, profile, ctx=ctx, mode=power.name, onnx_precision=precision)
        if (fmt, q) in measured_quality or q in stock or fmt is not Format.GGUF:
            quality = estimate_quality((fmt, q), measured_quality)
        else:  # an unverified fitted mix: the stock type nearest in bits per weight
            bpw = 8 * weights.total_bytes / max(1, shapes.params)
            quality = estimate_quality(nearest_key(fmt, bpw), measured_quality)
        artifact = (measured[(fmt, q)][1] if (fmt, q) in measured
                    else files[q].file if fmt is Format.GGUF and q in files else "")
        cands.append(Candidate(fmt, q, runtime, backend, cost, quality, fits=cost.total_bytes <= budget,
                               meets_speed=min_tps is None or cost.gen_tps >= min_tps, artifact=artifact,
                               needs_imatrix=needs, types_from=types_from))
    if any(c.needs_imatrix for c in cands):
        notes.append("candidates marked 'needs --imatrix': llama.cpp makes them only with an importance matrix "
                     "(convert with --imatrix / imatrix=True)")
    fitting = [c for c in cands if c.fits]
    for c in fitting:
        c.pareto = not any(_dominates(o, c) for o in fitting if o is not c)
    feasible = [c for c in fitting if c.meets_speed]
    pick: Candidate | None = None
    if feasible:
        best = min(feasible, key=lambda c: c.quality.mean_kl)
        pick = max((c for c in feasible if c.quality.mean_kl - best.quality.mean_kl <= tie_kl(c.quality, best.quality)),
                   key=lambda c: c.cost.gen_tps)
        pick.pick = True
        if pick.quality.warning:
            notes.append(pick.quality.warning)
    scaled = max((c.quality.scaled_to for c in cands), default=0)
    if scaled:
        types = f"{scaled} type{'s' if scaled > 1 else ''}"
        notes.append(f"estimated quality is llama.cpp's published Llama-3-8B figures, scaled to the {types} measured "
                     f"on this model (profiles/quality.py)")
    ranked = sorted(cands, key=lambda c: (not c.pick, not c.fits, not c.meets_speed,
                                          c.quality.mean_kl if c.fits else c.cost.total_bytes, -c.cost.gen_tps))
    reason = _reason(pick, cands, profile, power.name, ctx, budget, min_tps)
    return Plan(str(model_dir), profile.name, power.name, ctx, budget, min_tps, shapes.params, ranked, pick, reason,
                notes)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _reason(pick: Candidate | None, cands: list[Candidate], profile: Profile, mode: str,
            ctx: int, budget: int, min_tps: float | None) -> str:
    where = f"{profile.name} ({mode})"
    if not cands:
        return f"{where} lists no runtime edgekit can plan for."
    fitting = [c for c in cands if c.fits]
    if not fitting:
        small = min(cands, key=lambda c: c.cost.total_bytes)
        return (f"Nothing fits: the smallest candidate, {small.label}, needs {_gib(small.cost.total_bytes)} at ctx {ctx}, "
                f"more than the {_gib(budget)} available on {where}; use a shorter --ctx / ctx=, a smaller model or a "
                f"bigger device.")
    if pick is None:
        fast = max(fitting, key=lambda c: c.cost.gen_tps)
        return (f"Nothing reaches {min_tps:g} tokens/s: the fastest candidate that fits, {fast.label} on "
                f"{fast.runtime.value}, is predicted at {fast.cost.gen_tps:.1f} tokens/s on {where}; lower "
                f"--min-tokens-per-s or choose a faster device or power mode.")
    best = min((c for c in fitting if c.meets_speed), key=lambda c: c.quality.mean_kl)
    floor = f" and reaches {min_tps:g} tokens/s" if min_tps else ""
    predicted = (f"(predicted {_gib(pick.cost.total_bytes)}, {pick.cost.gen_tps:.1f} tokens/s, "
                 f"quality {pick.quality.basis})")
    head = f"{pick.label} on {pick.runtime.value}/{pick.backend.value}"
    if best is pick:
        return f"{head} is the most accurate candidate that fits {_gib(budget)} on {where}{floor} {predicted}."
    tie = tie_kl(pick.quality, best.quality)
    why = "2 standard errors of the measurements" if tie > QUALITY_TIE_KL else "no visible difference"
    return (f"{head} is as accurate as {best.label} (within {tie:.2g} nats KL: {why}) but "
            f"{pick.cost.gen_tps / best.cost.gen_tps:.1f}x faster, and fits {_gib(budget)} on {where}{floor} "
            f"{predicted}.")
