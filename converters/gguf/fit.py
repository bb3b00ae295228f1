"""Fit a GGUF to a size budget: a llama.cpp type per layer of each tensor class, for the least loss.

``--fit-size 1.2GB`` (or ``--fit PROFILE --ctx N``: the memory the profile leaves for weights
after the KV cache, compute buffers and runtime overhead) asks for the most accurate artifact
whose file fits. The allocation unit is a *tensor class*: every layer's ``attn_v``, every
layer's ``ffn_down``, the embedding, the output head. Each unit may take any rung of
:data:`LADDER` whose block divides its rows. Two ways to price a rung (``fit_method``):

* ``kl`` (measured): quantize only that class to that rung, everything else kept at F16, and
  measure the mean KL divergence from the float model on the calibration text, in llama.cpp.
  It sees what the network does with the error (an error in the output head costs more than
  the same error in ``attn_q``). One quantization and one pass per (class, rung): seconds for
  a 270M model, hours for a 7B.
* ``error`` (proxy): quantize the whole model once per rung and take each class's relative
  output error, ``sum_j imatrix_j * ||dW[:, j]||^2 / sum_j imatrix_j * ||W[:, j]||^2`` over its
  tensors (the expected squared error of ``W x`` over the calibration activations, relative to
  its signal; unweighted without an importance matrix). One quantization per rung, no model
  run, but blind to how much each class matters downstream.

benchmarks/imatrix.py measures which of the two predicts the measured KL of single-class and
whole mixes better (its table says so); ``kl`` is the default, ``error`` the choice when the
model is too big to run 40-odd times.

The losses are added up over classes (first-order: small independent errors add in KL), and a
greedy allocation upgrades, step by step, the class whose next rung buys the most loss per
byte (over each class's lower convex hull of (bytes, loss), so the greedy is exact on the hull),
while the file stays within the budget. The mix is written through llama.cpp's
``tt_overrides`` (one anchored pattern per class), then verified and measured like every artifact.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report

from .inspect import TensorRow, read_gguf
from .quantize import block_size
from .quants import QUANTS, GGUFQuant, Precision

log = logging.getLogger(__name__)

# Rungs a tensor class may take, fewest bits first: the k-quants llama.cpp makes without an
# importance matrix (each has fast CPU and CUDA kernels), q8_0, and F16 (no loss by definition:
# the reference the losses are measured against). A class whose rows are not a multiple of 256
# (Gemma 3 270M's hidden 640, SmolLM2's 576) cannot take a k-quant; it gets the 32-weight block
# types llama.cpp itself falls back to (q4_0, q5_0) and iq4_nl (non-linear, no matrix needed)
# instead. The other i-quants are left out: several need an importance matrix and their CPU
# kernels are slower per byte (profiles/costs.py).
LADDER: tuple[str, ...] = ("Q2_K", "Q3_K", "Q4_0", "IQ4_NL", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0", "F16")
SMALL_BLOCK = frozenset({"Q4_0", "IQ4_NL", "Q5_0"})  # only where no k-quant divides the rows
K_QUANTS = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})
# The quant whose llama.cpp file type names a mix dominated (by bytes) by each rung.
FILE_TYPE_OF: dict[str, str] = {"Q2_K": "q2_k", "Q3_K": "q3_k_s", "Q4_0": "q4_0", "IQ4_NL": "iq4_nl",
                                "Q4_K": "q4_k_s", "Q5_0": "q5_0", "Q5_K": "q5_k_s", "Q6_K": "q6_k", "Q8_0": "q8_0",
                                "F16": "q8_0"}
PRECISION_OF: dict[str, Precision] = {"Q2_K": Precision.INT2, "Q3_K": Precision.INT3, "Q4_0": Precision.INT4,
                                      "IQ4_NL": Precision.INT4, "Q4_K": Precision.INT4, "Q5_0": Precision.INT5,
                                      "Q5_K": Precision.INT5, "Q6_K": Precision.INT6, "Q8_0": Precision.INT8,
                                      "F16": Precision.FP16}
METHODS = ("kl", "error")
HOLD_SHARE = 0.05  # units this large a share of the model are also tried held at each rung
ALIGN = 32  # GGUF tensor data alignment (general.alignment default)
FIT_TOKENS = 1024  # calibration positions the kl method scores per rung
FIT_CTX = 256  # tokens per scoring window (half scored)

# "1.2GB", "900 MiB", "1500000000": decimal and binary units, as `ls -h` and datasheets mix them
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(value: str | int | float) -> int:
    """``"1.2GB"`` -> 1_200_000_000 bytes (GB/MB decimal, GiB/MiB binary)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise InputError(f"--fit-size / fit_size= must be positive, got {value}", hint="e.g. --fit-size 1.2GB")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"--fit-size / fit_size= takes a size such as 1.2GB or 900MiB, not {value!r}",
                         hint="units: B, KB, MB, GB (powers of 1000), KiB, MiB, GiB (powers of 1024)")
    return int(float(m.group(1)) * _UNITS[unit])


def size_label(n: int) -> str:
    """1_200_000_000 -> '1.2gb' (for file names and the manifest's quant name)."""
    for unit, div in (("gb", 10**9), ("mb", 10**6), ("kb", 10**3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n}b"


@dataclass(frozen=True)
class FitRequest:
    """What to fit: a byte budget for the file, and where it came from."""

    budget_bytes: int
    basis: str  # "size 1.2GB" or "profile jetson-orin-nano-8gb, ctx 4096: ..."
    label: str  # in the artifact's name: fit-1.2gb
    method: str = "kl"
    tokens: int = FIT_TOKENS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            from edgekit.errors import UnknownChoiceError

            raise UnknownChoiceError("fit method", self.method, METHODS)


def resolve_fit(config: dict[str, Any], size: str | int | None, profile: str | None, ctx: int | None,
                method: str = "kl") -> FitRequest:
    """The budget of ``--fit-size SIZE`` or ``--fit PROFILE [--ctx N]`` for this model."""
    if size is not None:
        n = parse_size(size)
        return FitRequest(n, f"size {size}", size_label(n), method)
    assert profile is not None
    n, basis = profile_budget(profile, config, ctx or DEFAULT_FIT_CTX)
    return FitRequest(n, basis, f"{profile}-ctx{ctx or DEFAULT_FIT_CTX}", method)


DEFAULT_FIT_CTX = 4096  # as `edgekit recommend`


def check_feasible(request: FitRequest, config: dict[str, Any]) -> None:
    """Refuse a budget below every matrix at its smallest rung before anything is written (the
    profiler's tensor list; the exact check, with metadata and vectors, follows on the real file)."""
    from edgekit.profiles.shapes import model_shapes, tensor_bytes

    least = 0
    for t in model_shapes(config).tensors:
        if t.is_matrix:
            least += min((tensor_bytes(t.ne, r) for r in LADDER if t.ne[0] % block_size(r) == 0),
                         default=tensor_bytes(t.ne, "F16"))
    if least > request.budget_bytes:
        raise InputError(f"the budget ({request.budget_bytes / 1e9:.3g} GB, {request.basis}) is smaller than the "
                         f"smallest mix edgekit can make (over {least / 1e9:.3g} GB: every matrix at "
                         f"{LADDER[0].lower()})",
                         hint="raise --fit-size / fit_size=, use a shorter --ctx / fit_ctx= or a device with more "
                              "memory, or a smaller model")


def profile_budget(name: str, config: dict[str, Any], ctx: int) -> tuple[int, str]:
    """Bytes a profile leaves for the GGUF's weights: its usable memory less what the profiler
    predicts for the KV cache at ``ctx``, llama.cpp's compute buffers and the runtime itself."""
    from edgekit.profiles.costs import GIB, estimate
    from edgekit.profiles.schema import Runtime
    from edgekit.profiles.shapes import gguf_weights, model_shapes
    from edgekit.profiles.store import get_profile

    p = get_profile(name)
    rt = next((r for r in p.runtimes if r.runtime is Runtime.LLAMA_CPP), None)
    if rt is None:
        raise InputError(f"profile {name} lists no llama.cpp runtime, so a GGUF cannot be fitted to it",
                         hint="pick a profile with llama.cpp (edgekit profile list), or use --fit-size / fit_size=")
    shapes = model_shapes(config)
    cost = estimate(shapes, gguf_weights(shapes, "q8_0"), rt.runtime, rt.backend, p, ctx=ctx)
    usable = int(p.usable_memory_gb.value * GIB)
    left = usable - cost.kv_bytes - cost.buffer_bytes - cost.overhead_bytes
    basis = (f"profile {name}, ctx {ctx}: {usable / GIB:.2f} GiB usable - KV {cost.kv_bytes / GIB:.2f} - buffers "
             f"{cost.buffer_bytes / GIB:.2f} - runtime {cost.overhead_bytes / GIB:.2f} GiB")
    if left <= 0:
        raise InputError(f"{name} has no memory left for weights at ctx {ctx} ({basis})",
                         hint="use a shorter --ctx / fit_ctx=, or a device with more memory")
    return left, basis


def fit_placeholder(request: FitRequest) -> GGUFQuant:
    """The fitted artifact's place in the run's order, before its mix is known."""
    return GGUFQuant(f"fit-{request.label}", "LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0", 8.5, Precision.INT8, "fitted mix")


@dataclass
class Unit:
    """One tensor class: the tensors it covers and, per allowed rung, bytes and loss."""

    name: str  # "attn_v.weight", "token_embd.weight"
    pattern: str  # llama.cpp tt_overrides regex (std::regex_search), anchored
    tensors: list[TensorRow]
    rungs: list[str]
    bytes: dict[str, int] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)


@dataclass
class FitPlan:
    request: FitRequest
    choice: dict[str, str]  # unit -> rung
    units: list[Unit]
    file_bytes: int  # predicted size of the file
    predicted_kl: float  # sum of the chosen rungs' losses (kl method: nats; error: relative units)
    fixed_bytes: int  # metadata, tokenizer and float vectors: the same at every rung

    @property
    def tensor_types(self) -> list[tuple[str, str]]:
        """(pattern, ggml type) for llama.cpp's tt_overrides: every matrix named."""
        return [(u.pattern, self.choice[u.name]) for u in self.units]

    def quant(self) -> GGUFQuant:
        """A GGUFQuant record for the mix: file type of its dominant rung, precision of its lowest."""
        by_rung: dict[str, int] = {}
        for u in self.units:
            by_rung[self.choice[u.name]] = by_rung.get(self.choice[u.name], 0) + u.bytes[self.choice[u.name]]
        main = max(by_rung, key=lambda r: by_rung[r])
        main = "F16" if main == "BF16" else main
        lowest = min(self.choice.values(), key=_rank)
        base = next(q for q in QUANTS if q.name == FILE_TYPE_OF[main])
        params = sum(math.prod(t.shape) for u in self.units for t in u.tensors)
        bpw = sum(u.bytes[self.choice[u.name]] for u in self.units) * 8 / max(1, params)
        return GGUFQuant(f"fit-{self.request.label}", base.ftype, main, round(bpw, 4),
                         PRECISION_OF["F16" if lowest == "BF16" else lowest],
                         f"fitted mix for {self.request.basis}")

    def to_dict(self) -> dict[str, Any]:
        return {"budget_bytes": self.request.budget_bytes, "basis": self.request.basis,
                "method": self.request.method, "predicted_file_bytes": self.file_bytes,
                "predicted_loss": round(self.predicted_kl, 6),
                "classes": {u.name: {"type": self.choice[u.name], "tensors": len(u.tensors),
                                     "bytes": u.bytes[self.choice[u.name]],
                                     "loss": {r: round(v, 6) for r, v in u.loss.items()}} for u in self.units}}


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def rung_bytes(t: TensorRow, rung: str) -> int:
    from edgekit.profiles.shapes import tensor_bytes

    return tensor_bytes(tuple(t.shape), rung)


def float_type(tensors: Sequence[TensorRow]) -> str:
    """The base file's matrix type (F16 or BF16): the loss-free top rung, kept as the source stored it."""
    types = {t.type for t in tensors if len(t.shape) >= 2}
    return "BF16" if types == {"BF16"} else "F16"


def class_units(tensors: Sequence[TensorRow]) -> tuple[list[Unit], int]:
    """The tensor classes of a float GGUF's matrices, and the bytes of everything else (vectors).

    The top rung is the file's own float type (bf16 sources stay bf16: no overflow to f16)."""
    top = float_type(tensors)
    ladder = tuple(top if r == "F16" else r for r in LADDER)
    by_class: dict[str, list[TensorRow]] = {}
    vectors = 0
    for t in tensors:
        if len(t.shape) < 2 or t.name.endswith("_norm.weight"):
            vectors += _padded(t.nbytes)
            continue
        m = re.fullmatch(r"blk\.\d+\.(.+)", t.name)
        by_class.setdefault(m.group(1) if m else t.name, []).append(t)
    units = []
    for name, ts in by_class.items():
        rungs = [r for r in ladder if all(t.shape[0] % block_size(r) == 0 for t in ts)]
        if K_QUANTS & set(rungs):  # the 32-block types are a fallback, not a choice, where k-quants fit
            rungs = [r for r in rungs if r not in SMALL_BLOCK]
        pattern = (r"^blk\.\d+\." if any(t.name.startswith("blk.") for t in ts) else "^") + re.escape(name) + "$"
        u = Unit(name, pattern, ts, rungs)
        u.bytes = {r: sum(_padded(rung_bytes(t, r)) for t in ts) for r in rungs}
        u.loss = {top: 0.0}
        units.append(u)
    return units, vectors


def split_by_layer(units: list[Unit]) -> list[Unit]:
    """Each block class as one unit per layer, each with its share (by weights) of the class's
    priced loss: the allocation can then give half the layers of a class the next type, as
    llama.cpp's _m mixes do, where a whole class's step would not fit (Gemma 3 270M at q4_k_m's
    size: half its ffn_down at q6_k). The pricing stays per class (one probe per class and type)."""
    out: list[Unit] = []
    for u in units:
        if len(u.tensors) < 2 or not all(t.name.startswith("blk.") for t in u.tensors):
            out.append(u)
            continue
        total = sum(math.prod(t.shape) for t in u.tensors)
        for t in u.tensors:
            share = math.prod(t.shape) / total
            part = Unit(t.name, "^" + re.escape(t.name) + "$", [t], list(u.rungs))
            part.bytes = {r: _padded(rung_bytes(t, r)) for r in u.rungs}
            part.loss = {r: v * share for r, v in u.loss.items()}
            out.append(part)
    return out


def allocate(units: list[Unit], budget: int, fixed: int) -> dict[str, str]:
    """The greedy below, and the same with each class held at each of its rungs in turn, best of all.

    The greedy alone spends the budget on small steps with the best loss per byte and may then
    find the one large step that mattered no longer fits (Gemma 3 270M: its tied 262k x 640
    embedding is 70% of the model and the head); holding one class fixed first covers that."""
    best = _greedy(units, budget, fixed, {})

    def loss(choice: dict[str, str]) -> float:
        return sum(u.loss[choice[u.name]] for u in units)

    whole = sum(max(u.bytes.values()) for u in units)
    for u in units:
        if max(u.bytes.values()) < HOLD_SHARE * whole:
            continue  # a small unit's steps are what the greedy already gets right
        for r in u.rungs:
            if r in u.loss and r != best[u.name]:
                try:
                    other = _greedy(units, budget, fixed, {u.name: r})
                except InputError:
                    continue  # this rung alone leaves too little for the rest
                if loss(other) < loss(best) - 1e-12:
                    best = other
    return best


def _greedy(units: list[Unit], budget: int, fixed: int, held: dict[str, str]) -> dict[str, str]:
    """Greedy over each unit's lower convex hull of (bytes, loss): cheapest first, then the
    upgrade with the largest loss saved per byte that still fits, until none does. ``held``:
    classes kept at one rung."""
    hulls = {u.name: [(u.bytes[held[u.name]], u.loss[held[u.name]], held[u.name])] if u.name in held
             else _hull([(u.bytes[r], u.loss[r], r) for r in u.rungs if r in u.loss]) for u in units}
    pos = dict.fromkeys(hulls, 0)
    total = fixed + sum(h[0][0] for h in hulls.values())
    if total > budget:
        smallest = ", ".join(f"{n}={h[0][2]}" for n, h in hulls.items())
        raise InputError(f"the budget ({budget / 1e9:.3g} GB) is smaller than the smallest mix edgekit can make "
                         f"({total / 1e9:.3g} GB: {smallest})",
                         hint="raise --fit-size / fit_size=, use a shorter --ctx / fit_ctx= or a device with more "
                              "memory, or a smaller model")
    while True:
        best: tuple[float, str] | None = None
        for name, h in hulls.items():
            i = pos[name]
            if i + 1 < len(h):
                db, dl = h[i + 1][0] - h[i][0], h[i][1] - h[i + 1][1]
                if total + db <= budget and (best is None or dl / max(db, 1) > best[0]):
                    best = (dl / max(db, 1), name)
        if best is None:
            break
        name = best[1]
        i = pos[name]
        total += hulls[name][i + 1][0] - hulls[name][i][0]
        pos[name] = i + 1
    # what is left may still buy a rung off the hull (a smaller step than the hull's next one)
    choice = {n: hulls[n][pos[n]][2] for n in hulls}
    by_name = {u.name: u for u in units}
    improved = True
    while improved:
        improved = False
        for u in units:
            if u.name in held:
                continue
            cur = choice[u.name]
            for r in u.rungs:
                if r in u.loss and u.loss[r] < u.loss[cur] and total - u.bytes[cur] + u.bytes[r] <= budget:
                    total += u.bytes[r] - by_name[u.name].bytes[cur]
                    choice[u.name], cur, improved = r, r, True
    return choice


def _hull(points: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
    """Lower-left convex hull of (bytes, loss): the rungs no mix of neighbours beats, by size."""
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    frontier: list[tuple[int, float, str]] = []
    for p in pts:  # drop rungs that cost more bytes for no less loss
        if not frontier or p[1] < frontier[-1][1]:
            frontier.append(p)
    hull: list[tuple[int, float, str]] = []
    for p in frontier:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


QuantizeFn = Callable[[Path, Path, GGUFQuant, Sequence[tuple[str, str]]], None]


def _rung_quant(rung: str) -> GGUFQuant:
    return next(q for q in QUANTS if q.name == FILE_TYPE_OF.get(rung, "q8_0"))


def _rank(rung: str) -> int:
    return LADDER.index("F16" if rung == "BF16" else rung)


def _is_float(rung: str) -> bool:
    return rung in ("F16", "BF16")


def plan_fit(base: Path, request: FitRequest, work: Path, quantize: QuantizeFn, *, calibration: str = "",
             imatrix: dict[str, np.ndarray] | None = None, threads: int | None = None,
             progress: ProgressFn | None = None) -> FitPlan:
    """Price every (class, rung) of the float GGUF ``base`` and choose the mix for the budget."""
    from .fit_pricing import PRICING_FILE, measure_error, measure_kl, pricing_key, read_pricing, write_pricing

    summary = read_gguf(base)
    units, vectors = class_units(summary.tensors)
    data = sum(_padded(t.nbytes) for t in summary.tensors)
    fixed = base.stat().st_size - data + vectors  # header, metadata, tokenizer, tensor infos, vectors
    smallest = fixed + sum(u.bytes[u.rungs[0]] for u in units if u.rungs)
    for u in units:
        if not u.rungs:
            raise InputError(f"tensor class {u.name} has rows that no GGUF type edgekit fits with divides",
                             hint="convert without --fit-size / fit_size=")
    if smallest > request.budget_bytes:
        allocate(units, request.budget_bytes, fixed)  # raises the one-line error with the smallest mix
    key = pricing_key(base, request, calibration, imatrix)
    cached = read_pricing(work, key)
    if cached is not None and all(set(u.rungs) <= set(cached.get(u.name, {})) for u in units):
        for u in units:
            u.loss = {r: float(cached[u.name][r]) for r in u.rungs}
        report(progress, "fit", f"pricing reused from {work / PRICING_FILE} (same float model, method and text)")
    else:
        if request.method == "kl":
            measure_kl(units, base, work, quantize, calibration, request, threads, progress)
        else:
            measure_error(units, base, work, quantize, imatrix, progress)
        write_pricing(work, key, units)
    units = split_by_layer(units)
    choice = allocate(units, request.budget_bytes, fixed)
    size = fixed + sum(u.bytes[choice[u.name]] for u in units)
    loss = sum(u.loss[choice[u.name]] for u in units)
    plan = FitPlan(request, choice, units, size, loss, fixed)
    report(progress, "fit", f"{size / 1e9:.3g} GB of {request.budget_bytes / 1e9:.3g}: {mix_summary(choice)}")
    return plan


def mix_summary(choice: dict[str, str]) -> str:
    """``attn_v=q8_0 x9 + q5_0 x9, token_embd=q8_0``: the chosen types per class, layers counted."""
    by_class: dict[str, dict[str, int]] = {}
    for name, rung in choice.items():
        cls = re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")
        by_class.setdefault(cls, {})[rung.lower()] = by_class.setdefault(cls, {}).get(rung.lower(), 0) + 1
    return ", ".join(cls + "=" + " + ".join(f"{r} x{n}" if n > 1 else r for r, n in kinds.items())
                     for cls, kinds in by_class.items())
