"""Quality of an artifact against its original source: measured on real text, reported, gated only on request.

Correctness (:mod:`.verify`) asks "does the artifact compute what its own weights say?" and
refuses a broken artifact. Quality asks "what did quantization cost?": a lossy artifact is
kept, its loss is measured here on an evaluation set of real text (at least 8k scored
tokens by default) and reported -- in the table, the manifest and, when large, a warning in
plain words. A gate (``max_kl`` / ``max_ppl_increase``) is opt-in and applies per artifact.

Scoring follows llama-perplexity: the text is cut into windows of the evaluation context and
only the second half of each window is scored, so every scored token has at least half a
window behind it. The source model runs once per conversion run; what KL, top-1 and perplexity
need from it is stored compactly per scored position (:class:`ReferenceScores`):

- vocabularies up to :data:`FULL_ROWS_MAX` floats in all: the full log-probabilities (exact KL);
- larger ones (a 262k vocabulary over 8k positions would be 8.6 GB): the top-:data:`TOP_K`
  log-probabilities plus the probability left in the tail. KL is then computed over the top-k
  tokens plus one "rest of the vocabulary" bucket -- exact for the head, a lower bound for the
  tail (merging outcomes never increases KL); with k = 64 the tail of a trained model holds
  a few percent of the mass, which is where quantization changes little.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import InputError


def _default_eval_tokens() -> int:
    """8192 scored positions, or $EDGEKIT_EVAL_TOKENS (a machine-wide default: the test suite uses fewer)."""
    value = os.environ.get("EDGEKIT_EVAL_TOKENS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 8192


DEFAULT_EVAL_TOKENS = _default_eval_tokens()  # llama.cpp's KL scoreboards use far more; 8k ranks neighbouring types
DEFAULT_EVAL_CTX = 512  # tokens per window, half of them scored
TOP_K = 64
FULL_ROWS_MAX = 1 << 24  # floats (64 MiB): below this the reference keeps full log-probability rows
Z95 = 1.959963984540054
ROWS = 64  # scored positions turned into log-probabilities at a time (at most)
ROW_FLOATS = 1 << 22  # ...and at most this many values: float64 temporaries of 32 MiB each


def rows_for(vocab: int) -> int:
    """Positions per chunk: 64 for small vocabularies, 16 for Gemma's 262k."""
    return max(1, min(ROWS, ROW_FLOATS // max(1, vocab)))

# Above these the loss is large enough to say so in words (nats of mean KL, perplexity %).
# llama.cpp's Llama-3-8B scoreboard puts q4_k_m at 0.031 and q2_k at 0.45 mean KL.
WARN_KL = 0.1
WARN_PPL_PCT = 10.0

# scored chunk of logits for the positions ``start..`` of ``ids``, in chunks
ScoreFn = Callable[[list[int], int], Iterable[np.ndarray]]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class EvalWindows:
    """Token windows of the evaluation text; positions ``first_scored..`` of each are scored."""

    windows: list[list[int]]
    first_scored: int
    source: str

    @property
    def n_scored(self) -> int:
        # position t predicts token t+1: the last position of a window has no target
        return sum(len(w) - 1 - self.first_scored for w in self.windows)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "windows": len(self.windows), "window": len(self.windows[0]),
                "scored_tokens": self.n_scored}


def make_windows(ids: list[int], head: list[int], *, n_ctx: int = DEFAULT_EVAL_CTX,
                 eval_tokens: int = DEFAULT_EVAL_TOKENS, source: str = "") -> EvalWindows:
    """Consecutive windows of ``head + ids[...]``; enough of them for ``eval_tokens`` scored positions."""
    if eval_tokens < 1:
        raise InputError(f"--eval-tokens / eval_tokens must be at least 1 (got {eval_tokens})",
                         hint=f"{DEFAULT_EVAL_TOKENS} is the default")
    step = n_ctx - len(head)
    first = n_ctx // 2
    per_window = n_ctx - 1 - first
    if step < 2 or per_window < 1:
        raise InputError(f"evaluation context {n_ctx} is too short", hint="use an evaluation context of 64 or more")
    want = math.ceil(eval_tokens / per_window)
    windows = [head + ids[i:i + step] for i in range(0, len(ids) - step + 1, step)][:want]
    if not windows:
        raise InputError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {step}",
                         hint="pass a longer evaluation text, or a smaller context")
    return EvalWindows(windows, first, source)


@dataclass
class ReferenceScores:
    """What the source model says at every scored position, stored compactly (see module doc)."""

    full: bool
    log_probs: np.ndarray  # [N, V] (full) or [N, k] top-k log-probabilities, float32
    top_ids: np.ndarray | None  # [N, k] int32 ids of the top-k (None when full)
    argmax: np.ndarray  # [N] int32
    target_nll: np.ndarray  # [N] float64: -log p_ref(next token)
    targets: np.ndarray  # [N] int32
    vocab: int

    @classmethod
    def collect(cls, windows: EvalWindows, score: ScoreFn, vocab: int,
                progress: Callable[[int, int], None] | None = None) -> ReferenceScores:
        n = windows.n_scored
        full = n * vocab <= FULL_ROWS_MAX
        k = vocab if full else min(TOP_K, vocab)
        lps = np.empty((n, k), dtype=np.float32)
        top = None if full else np.empty((n, k), dtype=np.int32)
        argmax = np.empty(n, dtype=np.int32)
        nll = np.empty(n, dtype=np.float64)
        targets = np.empty(n, dtype=np.int32)
        row = 0
        for w_i, (lp, tgt) in enumerate(_scored_rows(windows, score, vocab)):
            m = lp.shape[0]
            sl = slice(row, row + m)
            argmax[sl] = lp.argmax(-1)
            nll[sl] = -lp[np.arange(m), tgt]
            targets[sl] = tgt
            if full:
                lps[sl] = lp
            else:
                idx = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
                top[sl] = idx  # type: ignore[index]
                lps[sl] = np.take_along_axis(lp, idx, -1)
            row += m
            if progress is not None and row == _window_end(windows, w_i):
                progress(w_i + 1, len(windows.windows))
        return cls(full, lps, top, argmax, nll, targets, vocab)


def _window_end(windows: EvalWindows, i: int) -> int:
    return sum(len(w) - 1 - windows.first_scored for w in windows.windows[: i + 1])


def _scored_rows(windows: EvalWindows, score: ScoreFn, vocab: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(log-probabilities, next-token ids) per chunk of scored positions, window by window."""
    from edgekit.errors import VocabularyMismatchError

    for ids in windows.windows:
        pos = windows.first_scored
        for block in score(ids, windows.first_scored):
            if block.shape[-1] != vocab:
                raise VocabularyMismatchError(vocab, int(block.shape[-1]))
            # float64 log-probabilities of a few rows at a time: 64 x 262k x 8 B = 128 MiB
            step = rows_for(vocab)
            for i in range(0, len(block), step):
                chunk = block[i:i + step][: len(ids) - 1 - pos]  # the last position predicts nothing we know
                if not len(chunk):
                    continue
                yield log_softmax(chunk), np.asarray(ids[pos + 1: pos + 1 + len(chunk)], dtype=np.int64)
                pos += len(chunk)


@dataclass
class QualityMetrics:
    """An artifact's loss against the source on the evaluation set (llama-perplexity's statistics)."""

    mean_kl: float
    kl_stderr: float
    p99_kl: float
    max_kl: float
    top1: float  # fraction of positions whose argmax agrees with the source's
    ppl: float
    ppl_ref: float
    ppl_delta_pct: float
    ppl_delta_ci95_pct: tuple[float, float]  # 95% interval of the change, from paired per-token NLLs
    n_positions: int
    kl_method: str  # "full" | "top64+tail"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ppl_delta_ci95_pct"] = [_r(x) for x in self.ppl_delta_ci95_pct]
        return {k: _r(v) if isinstance(v, float) else v for k, v in d.items()}

    def warning(self, artifact: str, quant: str, imatrix: bool = False) -> str | None:
        """One plain-words line when the loss is large, else None (``imatrix``: one was used
        already, so it is not suggested)."""
        if self.mean_kl <= WARN_KL and self.ppl_delta_pct <= WARN_PPL_PCT:
            return None
        what = (f"loses {self.ppl_delta_pct:.1f}% perplexity on this model (mean KL {self.mean_kl:.3g}"
                if self.ppl_delta_pct > WARN_PPL_PCT else
                f"departs from the source on this model (mean KL {self.mean_kl:.3g}, perplexity "
                f"{self.ppl_delta_pct:+.1f}%")
        remedy = "or GPTQ" if imatrix else "an importance matrix or GPTQ"
        return (f"{artifact}: {quant} {what}, top-1 {self.top1 * 100:.1f}%); a higher-bit type (q5_k_m, q6_k) "
                f"{remedy} would lose less")


def _r(v: float) -> float:
    return float(f"{v:.6g}")


def score_artifact(ref: ReferenceScores, windows: EvalWindows, score: ScoreFn) -> QualityMetrics:
    """Compare an artifact's logits on the evaluation windows with the stored reference."""
    n = windows.n_scored
    kl = np.empty(n, dtype=np.float64)
    nll = np.empty(n, dtype=np.float64)
    agree = 0
    row = 0
    for lp, tgt in _scored_rows(windows, score, ref.vocab):
        m = lp.shape[0]
        sl = slice(row, row + m)
        kl[sl] = _kl_rows(ref, sl, lp)
        nll[sl] = -lp[np.arange(m), tgt]
        agree += int((lp.argmax(-1) == ref.argmax[sl]).sum())
        row += m
    diff = nll - ref.target_nll
    mean_diff = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    ppl_ref = math.exp(float(ref.target_nll.mean()))
    ppl = math.exp(float(nll.mean()))
    lo, hi = (math.expm1(mean_diff - Z95 * se) * 100, math.expm1(mean_diff + Z95 * se) * 100)
    return QualityMetrics(
        mean_kl=float(kl.mean()), kl_stderr=float(kl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        p99_kl=float(np.percentile(kl, 99)), max_kl=float(kl.max()), top1=agree / n, ppl=ppl, ppl_ref=ppl_ref,
        ppl_delta_pct=(ppl - ppl_ref) / ppl_ref * 100, ppl_delta_ci95_pct=(lo, hi), n_positions=n,
        kl_method="full" if ref.full else f"top{ref.log_probs.shape[1]}+tail",
    )


def _kl_rows(ref: ReferenceScores, sl: slice, lp: np.ndarray) -> np.ndarray:
    lp_ref = ref.log_probs[sl].astype(np.float64)
    p_ref = np.exp(lp_ref)
    if ref.full:
        return np.maximum((p_ref * (lp_ref - lp)).sum(-1), 0.0)
    assert ref.top_ids is not None
    lp_art = np.take_along_axis(lp, ref.top_ids[sl].astype(np.int64), -1)
    head = (p_ref * (lp_ref - lp_art)).sum(-1)
    rest_ref = np.clip(1.0 - p_ref.sum(-1), 1e-12, 1.0)
    rest_art = np.clip(1.0 - np.exp(lp_art).sum(-1), 1e-12, 1.0)
    return np.maximum(head + rest_ref * (np.log(rest_ref) - np.log(rest_art)), 0.0)


@dataclass(frozen=True)
class EvalSettings:
    """What quality is measured on: ``text`` (default: the packaged evaluation set), how much, how long."""

    text: str | None = None
    source: str | None = None  # how ``text`` is described in reports (a path)
    tokens: int = DEFAULT_EVAL_TOKENS
    ctx: int = DEFAULT_EVAL_CTX


@dataclass(frozen=True)
class QualityGate:
    """Opt-in limits on quality loss, per artifact (``--max-kl``, ``--max-ppl-increase``)."""

    max_kl: float | None = None
    max_ppl_increase_pct: float | None = None

    def failures(self, m: QualityMetrics) -> list[str]:
        out: list[str] = []
        if self.max_kl is not None and m.mean_kl > self.max_kl:
            out.append(f"mean KL {m.mean_kl:.3g} > --max-kl {self.max_kl:g}")
        if self.max_ppl_increase_pct is not None and m.ppl_delta_pct > self.max_ppl_increase_pct:
            out.append(f"perplexity +{m.ppl_delta_pct:.2f}% > --max-ppl-increase {self.max_ppl_increase_pct:g}%")
        return out

    @property
    def active(self) -> bool:
        return self.max_kl is not None or self.max_ppl_increase_pct is not None


@dataclass
class QualityReport:
    metrics: QualityMetrics
    eval_set: dict[str, Any]
    gate: QualityGate = field(default_factory=QualityGate)
    gate_failures: list[str] = field(default_factory=list)
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics.to_dict(), "eval_set": self.eval_set,
                "gate": {k: v for k, v in asdict(self.gate).items() if v is not None},
                "gate_failures": self.gate_failures, "warning": self.warning}


@dataclass(frozen=True)
class QualitySettings:
    """How a run measures quality (one evaluation set for every artifact) and what it refuses."""

    eval: EvalSettings = field(default_factory=EvalSettings)
    gate: QualityGate = field(default_factory=QualityGate)
