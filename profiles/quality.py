"""Quality of a recommend candidate: measured, or estimated from published figures and scaled to what was measured.

Quality is the loss against the source model on real text: mean KL divergence (nats, the
ranking figure), same-top-1 and perplexity change. An ``edgekit.json`` manifest carries it
measured for every verified artifact (:mod:`edgekit.converters.quality`, at least 8k scored
tokens, with the standard error of the mean KL). A type the manifest lacks is estimated:

1. :data:`QUALITY_TABLE` -- llama.cpp's published Llama-3-8B figures per type (below);
2. scaled to the model: small models lose more per bit than an 8B one, and by an amount only
   a measurement tells. Per figure (KL, 1 - top-1, perplexity change) each measured quantized
   type gives a ratio measured / table; the ratio for an unmeasured type is interpolated in
   log space, linearly in bits per weight, between its nearest measured neighbours (the
   nearest one's ratio beyond the measured range). The neighbours are the measured types of
   the candidate's own format; a format with none borrows those of the model's other formats
   (the model's sensitivity, measured through another converter);
3. kept in line with the measurements: an estimate is never better than a measured type of
   its format that has at least as many bits and a published figure at least as good, nor
   worse than one with at most as many bits and a published figure at least as bad.

Float types (f32, f16, bf16, fp32, fp16) lose only rounding, which depends on the source's
dtype, not on how sensitive the model is to quantization: they are neither scaled nor used
to scale, only kept in line (step 3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgekit._compat import StrEnum
from edgekit.converters.registry import Format

QualityKey = tuple[Format, str]


class QualitySource(StrEnum):
    MEASURED = "measured"
    ESTIMATED = "estimated"


@dataclass(frozen=True)
class Quality:
    mean_kl: float  # nats vs the source model, lower is better
    top1: float  # fraction of positions whose argmax agrees
    ppl_delta_pct: float
    source: QualitySource = QualitySource.ESTIMATED
    kl_stderr: float | None = None  # measured: standard error of mean_kl over the evaluation positions
    p99_kl: float | None = None  # measured
    n_positions: int | None = None  # measured: scored evaluation positions
    warning: str | None = None  # measured: the converter's plain-words warning about a large loss
    scaled_to: int = 0  # estimated: measured types of this model the estimate was scaled to

    @property
    def basis(self) -> str:
        if self.source is QualitySource.MEASURED:
            return "measured"
        if self.scaled_to:
            return f"estimated (scaled to {self.scaled_to} measured type{'s' if self.scaled_to > 1 else ''})"
        return "estimated"


# --- published figures ----------------------------------------------------------------------
# llama.cpp, tools/perplexity/README.md, "LLaMA 3 8b Scoreboard" (revision f364eb6f, CUDA,
# RTX 4090; Wikitext-2 test set; KL against the FP16 model's logits), the rows without an
# importance matrix: type -> (model size GiB, ΔPPL, mean KLD).
# https://github.com/ggml-org/llama.cpp/blob/master/tools/perplexity/README.md
LLAMA3_8B_SCOREBOARD: dict[str, tuple[float, float, float]] = {
    "q8_0": (7.96, 0.002650, 0.001355),
    "q6_k": (6.14, 0.021748, 0.005452),
    "q5_k_m": (5.33, 0.056974, 0.010762),
    "q5_k_s": (5.21, 0.104964, 0.016595),
    "q5_1": (5.65, 0.106223, 0.018045),
    "q5_0": (5.21, 0.131591, 0.022239),
    "q4_k_m": (4.58, 0.175482, 0.031273),
    "q4_k_s": (4.37, 0.268895, 0.043136),
    "q4_1": (4.78, 0.451103, 0.071683),
    "q4_0": (4.34, 0.468514, 0.071940),
    "q3_k_l": (4.03, 0.556242, 0.087176),
    "q3_k_m": (3.74, 0.656864, 0.101913),
    "q3_k_s": (3.41, 1.632152, 0.228217),
    "q2_k": (2.96, 3.519934, 0.445132),
}
# The same scoreboard's i-quant rows, each quantized with an importance matrix from 10M tokens
# of Wikitext ("WT 10m"): llama.cpp publishes no i-quant row without one (the 1-3 bit ones
# cannot be made without; iq4_xs, iq4_nl, iq3_s and iq3_m can, and lose more then).
LLAMA3_8B_IMATRIX_SCOREBOARD: dict[str, tuple[float, float, float]] = {
    "iq4_nl": (4.35, 0.223959, 0.035742),
    "iq4_xs": (4.14, 0.228071, 0.036334),
    "iq3_m": (3.53, 0.666694, 0.102534),
    "iq3_s": (3.42, 0.733867, 0.111278),
    "iq3_xs": (3.28, 0.931409, 0.138693),
    "iq3_xxs": (3.05, 1.226803, 0.183625),
    "iq2_m": (2.74, 2.369166, 0.325989),
    "iq2_s": (2.56, 3.419148, 0.439197),
    "iq2_xs": (2.43, 4.529791, 0.546290),
    "iq2_xxs": (2.24, 7.860148, 0.812022),
    "iq1_m": (2.01, 19.262089, 1.393084),
    "iq1_s": (1.88, 54.462959, 2.254554),
}
# Perplexity of the FP16 logits themselves: the scoreboard's f16 row (6.233160) minus its ΔPPL.
# (That row's KLD, 0.00055, is the 16-bit storage of the reference logits, not f16's loss.)
LLAMA3_8B_PPL = 6.233160 - 0.001524
LLAMA3_8B_PARAMS = 8_030_261_248  # meta-llama/Meta-Llama-3-8B: turns the sizes into bits per weight
# f16's own loss, from the same README's "LLaMA 3 BF16 vs. FP16 comparison" (the BF16 model's
# logits as the base, FP16 scored): mean KLD 2.515e-5, same top p 99.739%, PPL ratio 1.000404.
F16_ROUNDING = (2.515e-5, 0.99739, 0.0404)
# Same-top-1 ("Same top p") is published for four types (the README's "LLaMA 2 vs. LLaMA 3"
# table, L3 8b columns) plus the BF16-vs-FP16 run: (mean KLD, same top p). The other types'
# top-1 is read off these points, 1 - top-1 interpolated log-log in KL (the points lie close
# to one power law, 1 - top1 ~ KL^0.38...0.48).
LLAMA3_8B_SAME_TOP: tuple[tuple[float, float], ...] = (
    (2.515e-5, 0.99739), (0.001355, 0.97674), (0.005452, 0.96031), (0.031273, 0.91901), (0.445132, 0.71138))


def _top1_from_kl(kl: float) -> float:
    pts = [(math.log(k), math.log(1.0 - t)) for k, t in LLAMA3_8B_SAME_TOP]
    x = math.log(kl)
    i = min(max(sum(p[0] <= x for p in pts) - 1, 0), len(pts) - 2)  # the segment around x (end ones beyond)
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return 1.0 - math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass(frozen=True)
class TableRow:
    quality: Quality  # the estimate before scaling
    bpw: float  # bits per weight, for interpolating between measured types
    anchor: str  # which published figure it is
    scaled: bool = True  # False for float types (rounding only)


def _scoreboard(name: str, bpw: float | None = None, note: str = "") -> TableRow:
    gib, dppl, kld = LLAMA3_8B_SCOREBOARD.get(name) or LLAMA3_8B_IMATRIX_SCOREBOARD[name]
    q = Quality(kld, round(_top1_from_kl(kld), 5), round(dppl / LLAMA3_8B_PPL * 100, 3))
    file_bpw = gib * 2**30 * 8 / LLAMA3_8B_PARAMS  # the scoreboard's file size: embeddings and output included
    return TableRow(q, bpw if bpw is not None else round(file_bpw, 2), f"Llama-3-8B {name}{note}")


_LOSSLESS = TableRow(Quality(0.0, 1.0, 0.0), 32.0, "lossless", scaled=False)
_F16 = TableRow(Quality(*F16_ROUNDING), 16.0, "Llama-3-8B bf16 -> f16 rounding", scaled=False)

# (format, type) -> estimate. GGUF types are the scoreboard's own rows (bits per weight from
# its file sizes). The others have no published Llama-3-8B row; each takes the row of the
# GGUF type closest to it in grid and rounding, at its own bits per weight:
# - ONNX int4 (MatMulNBits, edgekit's default k_quant, block 32, fp16 scale + 4-bit zero
#   point: 4.625 bpw) is llama.cpp's k-quant scale/min search on blocks of 32 at every matrix,
#   i.e. q4_k_s's grid without q4_k_m's q6_k tensors: q4_k_s (KL 0.043, 1.4x q4_k_m);
# - ONNX int8 (MatMulNBits 8-bit, block 32, 8.5 bpw): q8_0's grid plus a zero point: q8_0;
# - GPTQ int4/int8 (symmetric, group 128: 4.125 / 8.125 bpw): llama.cpp publishes no GPTQ
#   row; GPTQ's error feedback on the coarser group-128 grid is taken as even with q4_0's
#   round-to-nearest on blocks of 32 (q4_0), and 8 bits as q8_0. GPTQ is not a candidate (no
#   runtime plans for it); a measured GPTQ artifact only lends its ratio to the scaling.
# - fp16/f16: bf16 -> f16 rounding as measured above (ONNX fp16 also computes in fp16, which
#   this does not cover); bf16 takes f16's figure (lossless for a bf16 source, more loss than
#   f16 for an f32 one).
QUALITY_TABLE: dict[QualityKey, TableRow] = {
    (Format.GGUF, "f32"): _LOSSLESS,
    (Format.GGUF, "f16"): _F16,
    (Format.GGUF, "bf16"): _F16,
    **{(Format.GGUF, name): _scoreboard(name) for name in LLAMA3_8B_SCOREBOARD},
    **{(Format.GGUF, name): _scoreboard(name, note=" (imatrix WT 10m)") for name in LLAMA3_8B_IMATRIX_SCOREBOARD},
    (Format.ONNX, "fp32"): _LOSSLESS,
    (Format.ONNX, "fp16"): _F16,
    (Format.ONNX, "int8"): _scoreboard("q8_0", 8.5, " (ONNX int8 anchor)"),
    (Format.ONNX, "int4"): _scoreboard("q4_k_s", 4.625, " (ONNX int4 k_quant anchor)"),
    (Format.GPTQ, "int8"): _scoreboard("q8_0", 8.125, " (GPTQ int8 anchor)"),
    (Format.GPTQ, "int4"): _scoreboard("q4_0", 4.125, " (GPTQ int4 anchor)"),
}
# Manifest quant names that are another type's artifact: ONNX built from a GPTQ checkpoint.
_ALIASES: dict[QualityKey, QualityKey] = {(Format.ONNX, "int4-gptq"): (Format.GPTQ, "int4"),
                                          (Format.ONNX, "int8-gptq"): (Format.GPTQ, "int8")}
_GPTQ_SCHEME = re.compile(r"(int\d+)-g\w+")  # int4-g128 -> int4


def table_row(key: QualityKey) -> TableRow | None:
    fmt, quant = key
    if fmt is Format.GPTQ and (m := _GPTQ_SCHEME.fullmatch(quant)):
        quant = m.group(1)
    return QUALITY_TABLE.get(_ALIASES.get((fmt, quant), (fmt, quant)))


# --- ties --------------------------------------------------------------------------------------
# Two candidates are tied when their mean KL differs by less than what 8k evaluation tokens
# resolve -- 2 standard errors of the difference (taken as independent: sqrt(se_a² + se_b²),
# an over-estimate for two artifacts scored on the same positions) -- or by less than
# QUALITY_TIE_KL, a difference too small to matter in use: it lies just above what q8_0 loses
# on Llama-3-8B (0.0014), which llama.cpp's users treat as lossless. Without two measured
# standard errors only the constant applies.
QUALITY_TIE_KL = 0.002
TIE_STDERRS = 2.0


def tie_kl(a: Quality, b: Quality) -> float:
    """The KL difference within which ``a`` and ``b`` count as equally accurate."""
    if a.kl_stderr is not None and b.kl_stderr is not None:
        return max(QUALITY_TIE_KL, TIE_STDERRS * math.hypot(a.kl_stderr, b.kl_stderr))
    return QUALITY_TIE_KL


# --- estimates scaled to the measured types ---------------------------------------------------

def _losses(q: Quality) -> tuple[float, float, float]:
    """The three figures as losses (higher is worse)."""
    return q.mean_kl, 1.0 - q.top1, q.ppl_delta_pct


def _log_ratio_at(points: list[tuple[float, float]], bpw: float) -> float:
    """(bpw, log ratio) points -> the log ratio at ``bpw``: linear between neighbours, flat beyond."""
    by_bpw: dict[float, list[float]] = {}
    for b, r in points:
        by_bpw.setdefault(b, []).append(r)
    pts = sorted((b, sum(rs) / len(rs)) for b, rs in by_bpw.items())  # types of equal bits: their mean
    if bpw <= pts[0][0]:
        return pts[0][1]
    if bpw >= pts[-1][0]:
        return pts[-1][1]
    (b0, r0), (b1, r1) = next((pts[i], pts[i + 1]) for i in range(len(pts) - 1) if pts[i + 1][0] >= bpw)
    return r0 + (r1 - r0) * (bpw - b0) / (b1 - b0)


def nearest_key(fmt: Format, bpw: float) -> QualityKey:
    """The table's scaled type of ``fmt`` closest in bits per weight: the stand-in estimate for an
    artifact of no stock type (a fitted mix) that was not verified."""
    rows = [(k, r) for k, r in QUALITY_TABLE.items() if k[0] is fmt and r.scaled]
    return min(rows, key=lambda kr: abs(kr[1].bpw - bpw))[0]


def estimate(key: QualityKey, measured: Mapping[QualityKey, Quality]) -> Quality:
    """``key``'s quality for this model: measured, else the table's scaled to ``measured`` (module doc)."""
    if key in measured:
        return measured[key]
    row = table_row(key)
    if row is None:
        raise KeyError(key)
    rows = {k: (r, q) for k, q in measured.items() if (r := table_row(k)) is not None}
    own = {k: v for k, v in rows.items() if k[0] is key[0]}
    anchors = [v for v in (own if any(r.scaled for r, _ in own.values()) else rows).values() if v[0].scaled]
    losses = list(_losses(row.quality))
    if row.scaled and anchors:
        for i, table_loss in enumerate(losses):
            pts = [(r.bpw, math.log(_losses(q)[i] / _losses(r.quality)[i])) for r, q in anchors
                   if _losses(q)[i] > 0 and _losses(r.quality)[i] > 0]
            if pts and table_loss > 0:
                losses[i] = table_loss * math.exp(_log_ratio_at(pts, row.bpw))
    for i in range(3):  # in line with the measured types of the same format
        mine = _losses(row.quality)[i]
        worse_or_equal = [_losses(q)[i] for r, q in own.values() if r.bpw <= row.bpw and _losses(r.quality)[i] >= mine]
        better_or_equal = [_losses(q)[i] for r, q in own.values() if r.bpw >= row.bpw and _losses(r.quality)[i] <= mine]
        if worse_or_equal:
            losses[i] = min(losses[i], min(worse_or_equal))
        if better_or_equal:  # applied last: never better than a measured type with more bits wins
            losses[i] = max(losses[i], max(better_or_equal))
    kl, miss, ppl = losses
    scaled_to = len(anchors) if row.scaled else 0
    return Quality(kl, min(max(1.0 - miss, 0.0), 1.0), ppl, QualitySource.ESTIMATED, scaled_to=scaled_to)


def from_verification(v: object) -> Quality | None:
    """A manifest entry's ``verification`` dict -> measured quality (None: not verified)."""
    if not isinstance(v, dict) or not all(isinstance(v.get(k), int | float) for k in ("mean_kl", "top1")):
        return None  # converted with --no-verify

    def num(name: str) -> float | None:
        x = v.get(name)
        return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None

    n = v.get("n_positions")
    warning = v.get("warning")
    return Quality(float(v["mean_kl"]), float(v["top1"]), num("ppl_delta_pct") or 0.0, QualitySource.MEASURED,
                   kl_stderr=num("kl_stderr"), p99_kl=num("p99_kl"), n_positions=n if isinstance(n, int) else None,
                   warning=warning if isinstance(warning, str) else None)
