"""Correctness of an artifact: does it compute what its own weights say? A broken artifact is refused.

Four checks, every format alike (a format supplies ``tokenize``, ``logits`` and its weights,
dequantized: :class:`~.reference.ArtifactTensor`):

1. **tokens**: the artifact's tokenizer gives the source tokenizer's ids on the probe texts
   (:mod:`.probes`: whitespace, digits, code, CJK, emoji, the chat template);
2. **weights**: each dequantized tensor, mapped back to the HF layout, is within its storage
   type's rounding of the source tensor (:data:`WEIGHT_BOUNDS`): a permuted, transposed,
   swapped or missing tensor shows as a relative error near or above 1 at any precision;
3. **logits**: the artifact's runtime and the source model carrying *the artifact's own
   weights* agree on the probe texts within :data:`LOGIT_BOUNDS` -- bounds as tight at q2_k as
   at f16, since quantization is no longer part of the difference: a wrong graph, rope,
   norm or soft-cap shows as O(1) relative error.

4. **stop tokens**: every end-of-generation id the source declares is one in the artifact
   (:func:`check_stops`).

What quantization costs is quality, measured and reported by :mod:`.quality`, never a
reason to refuse an artifact (unless the user sets a gate).
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .quality import log_softmax, rows_for

if TYPE_CHECKING:
    from .artifact_weights import ArtifactWeights, WeightCheck
    from .reference import SourceReference

log = logging.getLogger(__name__)

TokenizeFn = Callable[[str, bool], list[int]]
LogitsFn = Callable[[list[int]], np.ndarray]


@dataclass(frozen=True)
class LogitBounds:
    max_mean_kl: float  # nats, mean over probe positions
    min_top1: float  # fraction of the decisive positions (DECISIVE_NATS) whose argmax agrees
    max_rel_err: float  # ||centered logits diff|| / ||centered reference||


# Artifact runtime vs the source model carrying the artifact's own weights, keyed by the dtype
# the reference computes in. What is left is runtime arithmetic: llama.cpp rounds activations
# to 8 bits (q8_K/q8_0) for its quantized dot products, to f16 for f16 weights, and keeps the KV
# cache in f16; ONNX Runtime's MatMulNBits accumulates in fp32. Measured on the trained demo
# model: rel. error 8e-4 (f16) to 1.6e-2 (q2_k), KL <= 1.2e-3; on Gemma 3 270M, whose
# activations are large, llama.cpp's 8-bit activations alone give KL ~0.013 at q4_0. A broken
# conversion (wrong rope permutation, missing norm offset, a tensor read from the wrong place,
# dropped layers) shows rel. error >= 0.3 and KL >= 0.2, so the bounds sit between the two.
LOGIT_BOUNDS: dict[str, LogitBounds] = {
    "float32": LogitBounds(max_mean_kl=0.05, min_top1=0.80, max_rel_err=0.15),
    # a bf16/f16 reference rounds every activation to 8/11 bits itself
    "bfloat16": LogitBounds(max_mean_kl=0.08, min_top1=0.75, max_rel_err=0.20),
    "float16": LogitBounds(max_mean_kl=0.06, min_top1=0.78, max_rel_err=0.18),
}

# Storage bits per weight (block scales included) -> the largest relative error
# ||dequantized - source|| / ||source|| of a correct tensor. Rounding to b bits costs about
# 2^-b of the range; trained weights with outliers cost more. Measured on trained tensors
# (demo model, Gemma 3 270M): q8_0 0.4%, q6_k 1.6%, q4_k 6-8%, q3_k 13-16%, q2_k 25-35%,
# iq2_xxs ~35%, iq1_s ~55%. A permuted or swapped tensor gives ~1.41, a sign flip 2, a
# zeroed one 1: every bound stays below those.
WEIGHT_BOUNDS: tuple[tuple[float, float], ...] = (
    # (up to bits, bound)
    (1.99, 0.95),
    (2.99, 0.70),
    (3.99, 0.45),
    (4.99, 0.25),
    (5.99, 0.12),
    (7.99, 0.06),
    (8.99, 0.02),
    (15.99, 0.01),
    (99.0, 0.005),
)


def weight_bound(bits: float) -> float:
    i = bisect_left([b for b, _ in WEIGHT_BOUNDS], bits)
    return WEIGHT_BOUNDS[min(i, len(WEIGHT_BOUNDS) - 1)][1]


# Top-1 agreement is judged only where the reference's top-1 leads its runner-up by this many
# nats: a near-tie is decided by runtime arithmetic, not by the conversion. A random-weight model
# (flat logits over a large vocabulary: a synthetic 7B's top-1 leads by ~0.2) has almost no such
# position, and a correct q4_k_m of it agreed on 65% of the argmaxes; a trained model has most.
DECISIVE_NATS = 1.0
MIN_DECISIVE = 20  # fewer decisive positions than this: top-1 says nothing, KL and rel. error decide


@dataclass
class LogitMetrics:
    mean_kl: float
    p99_kl: float
    max_kl: float
    top1: float  # over every probe position
    rel_err: float
    n_positions: int
    top1_decisive: float = 1.0  # over the positions where the reference's top-1 leads by DECISIVE_NATS
    n_decisive: int = 0


@dataclass
class VerificationReport:
    artifact: str
    precision: str
    token_probes: int
    token_mismatches: list[str]
    metrics: LogitMetrics | None
    bounds: LogitBounds
    weights: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stop_tokens: dict[str, Any] = field(default_factory=dict)  # the declared stops and those missing

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "passed": self.passed,
            "precision": self.precision,
            "token_probes": self.token_probes,
            "token_mismatches": self.token_mismatches,
            "bounds": asdict(self.bounds),
            "weights": self.weights,
            "failures": self.failures,
        }
        if self.stop_tokens:
            d["stop_tokens"] = self.stop_tokens
        if self.metrics is not None:
            d["logits"] = {k: round_metric(v) for k, v in asdict(self.metrics).items()}
        return d


def round_metric(v: Any) -> Any:
    """Floats to 6 significant digits for reports (other values as they are)."""
    return float(f"{v:.6g}") if isinstance(v, float) else v


def kl_per_position(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) per row, in nats."""
    return kl_from_log_probs(log_softmax(ref_logits), log_softmax(logits))


def kl_from_log_probs(lp_ref: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """KL per row from log-probabilities a caller already has (no second softmax)."""
    return np.maximum((np.exp(lp_ref) * (lp_ref - lp)).sum(axis=-1), 0.0)  # type: ignore[no-any-return]


def token_nll(log_probs: np.ndarray, ids: list[int]) -> np.ndarray:
    """-log p(ids[t+1]) from row t of ``log_probs`` (position t predicts token t+1), per position."""
    return -log_probs[np.arange(len(ids) - 1), np.asarray(ids[1:])]  # type: ignore[no-any-return]


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:] given logits[:-1]."""
    return float(math.exp(token_nll(log_softmax(logits[:-1]), ids).mean()))


def compare(ref: Iterable[np.ndarray], got: Iterable[np.ndarray]) -> LogitMetrics:
    from edgekit.errors import VocabularyMismatchError

    kls, agree, num, den = [], 0, 0.0, 0.0
    n = n_dec = agree_dec = 0
    for r, g in zip(ref, got, strict=True):
        if r.shape[-1] != g.shape[-1]:
            raise VocabularyMismatchError(int(r.shape[-1]), int(g.shape[-1]))
        if r.shape != g.shape:
            raise AssertionError(f"logits for {r.shape[0]} positions, got {g.shape[0]}")
        # a few rows at a time: float64 temporaries of a whole probe would be T x vocab x 8 B each
        step = rows_for(r.shape[-1])
        for i in range(0, r.shape[0], step):
            rr, gg = r[i:i + step], g[i:i + step]
            kls.append(kl_per_position(rr, gg))
            same = rr.argmax(-1) == gg.argmax(-1)
            agree += int(same.sum())
            top2 = np.partition(rr, -2, axis=-1)[:, -2:]
            decisive = top2[:, 1] - top2[:, 0] >= DECISIVE_NATS
            n_dec += int(decisive.sum())
            agree_dec += int((same & decisive).sum())
            rc = rr - rr.mean(-1, keepdims=True)
            gc = gg - gg.mean(-1, keepdims=True)
            num += float(((gc - rc) ** 2).sum())
            den += float((rc**2).sum())
        n += r.shape[0]
    kl = np.concatenate(kls)
    return LogitMetrics(mean_kl=float(kl.mean()), p99_kl=float(np.percentile(kl, 99)), max_kl=float(kl.max()),
                        top1=agree / n, rel_err=math.sqrt(num / max(den, 1e-30)), n_positions=n,
                        top1_decisive=agree_dec / n_dec if n_dec else 1.0, n_decisive=n_dec)


def check_tokens(ref: SourceReference, tokenize: TokenizeFn) -> tuple[int, list[str]]:
    mismatches: list[str] = []
    n = 0
    for name, text in ref.token_probes.items():
        # the chat template already carries its special tokens: never add more
        modes = (False,) if name == "chat_template" else (False, True)
        for add_special in modes:
            n += 1
            want, got = ref.encode(text, add_special), tokenize(text, add_special)
            if want != got:
                i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
                mismatches.append(f"{name}{'+special' if add_special else ''}: first difference at token {i} "
                                  f"(source {want[i:i + 3]} vs artifact {got[i:i + 3]})")
    return n, mismatches


@dataclass
class OwnWeights:
    """The torch half of an artifact's correctness check, done before its runtime is opened (so
    the two never hold memory at once): its weights compared with the source's, and the source
    model's logits on the probe set with those weights."""

    weights: WeightCheck
    logits: list[np.ndarray]


def own_weights(ref: SourceReference, weights: ArtifactWeights, expected: Callable[[str], np.ndarray]) -> OwnWeights:
    check, logits = ref.artifact_logits(weights, expected, ref.logit_ids)
    ref.park()  # the runtime comes next: the reference's resident tensors wait on disk
    return OwnWeights(check, logits)


def check_stops(ref: SourceReference, is_eog: Callable[[int], bool]) -> tuple[dict[str, Any], list[str]]:
    """4. **stop tokens**: every end-of-generation token the source declares (generation
    config, tokenizer config, the chat template's end of turn: :mod:`.stop_tokens`) ends
    generation in the artifact's runtime. One missing is a broken artifact: the model runs
    past the end of its turn, whatever its weights."""
    from .stop_tokens import declared_stops, stop_failures

    stops = declared_stops(ref.model_dir, ref.tokenizer.get_vocab(), n_vocab=ref.vocab)
    failures = stop_failures(stops, is_eog)
    return {**stops.to_dict(), "missing": [t.id for t in stops.missing(is_eog)]}, failures


def verify(ref: SourceReference, artifact: str, precision: str, tokenize: TokenizeFn, logits: LogitsFn,
           own: OwnWeights, bounds: LogitBounds | None = None, is_eog: Callable[[int], bool] | None = None
           ) -> VerificationReport:
    """Tokens, weights, logits and (given the runtime's ``is_eog``) stop tokens of one artifact
    against the source model carrying its weights."""
    dtype = str(ref.dtype).removeprefix("torch.")
    th = bounds or LOGIT_BOUNDS.get(dtype, LOGIT_BOUNDS["float32"])
    n_probes, mismatches = check_tokens(ref, tokenize)
    failures: list[str] = []
    if mismatches:
        failures.append(f"tokens: {len(mismatches)}/{n_probes} probes differ; {mismatches[0]}")
    wcheck, want = own.weights, own.logits
    failures += wcheck.failures(weight_bound)
    got = (logits(ids) for ids in ref.logit_ids)  # one probe's logits at a time
    metrics = compare(want, got)
    # NaN compares false with every bound: an artifact whose runtime overflows (a Mamba state that
    # grows instead of decaying) would otherwise pass every check below
    if not (math.isfinite(metrics.mean_kl) and math.isfinite(metrics.rel_err)):
        failures.append(f"logits: not finite (mean KL {metrics.mean_kl:.3g}, relative error {metrics.rel_err:.3g}) "
                        f"against the artifact's own weights")
    if metrics.mean_kl > th.max_mean_kl:
        failures.append(f"logits: mean KL {metrics.mean_kl:.3g} > {th.max_mean_kl:g} against the artifact's own weights")
    if metrics.n_decisive >= MIN_DECISIVE and metrics.top1_decisive < th.min_top1:
        failures.append(f"logits: top-1 agreement {metrics.top1_decisive:.3f} < {th.min_top1:g} against the artifact's "
                        f"own weights (on the {metrics.n_decisive} positions where the source's top-1 is clear)")
    if metrics.rel_err > th.max_rel_err:
        failures.append(f"logits: relative error {metrics.rel_err:.3g} > {th.max_rel_err:g} against the artifact's "
                        f"own weights")
    stops: dict[str, Any] = {}
    if is_eog is not None:
        stops, stop_failures = check_stops(ref, is_eog)
        failures += stop_failures
    report = VerificationReport(artifact, precision, n_probes, mismatches, metrics, th, wcheck.summary(), failures,
                                stops)
    log.info("correctness of %s: %s (logit rel. error %.3g, KL %.3g; worst weight %s)", artifact,
             "pass" if report.passed else "; ".join(failures), metrics.rel_err, metrics.mean_kl,
             wcheck.summary().get("max_rel_err"))
    return report
