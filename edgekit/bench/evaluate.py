"""``edgekit eval``: perplexity of an artifact on a text and, given a reference, KL divergence
statistics in the style of ``llama-perplexity --kl-divergence``.

The text is tokenized once with the artifact's tokenizer and cut into chunks of the
context length (the model's BOS first when it uses one); as in llama-perplexity, only the
second half of each chunk is scored, so every scored token has at least half a context
behind it. The reference -- a Hugging Face model directory (transformers, float32) or
another artifact, e.g. the f16 GGUF -- sees exactly the same token ids, so tokenizer
differences cannot leak into the statistics. The maths comes from the verifier
(:mod:`edgekit.converters.verify`): ``log_softmax`` and ``kl_from_log_probs``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.reference import torch_logits
from edgekit.converters.verify import kl_from_log_probs, log_softmax
from edgekit.errors import InputError, VocabularyMismatchError
from edgekit.progress import ProgressFn, report

# Percentiles of per-token KL that llama-perplexity prints.
KL_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0)


@dataclass
class KlStats:
    mean: float
    stderr: float
    max: float
    min: float
    percentiles: dict[str, float]  # "p99" -> value
    same_top1_pct: float
    mean_delta_p_pct: float  # mean of p(token) - p_ref(token), in percent
    rms_delta_p_pct: float


@dataclass
class EvalResult:
    artifact: str
    text: str
    n_ctx: int
    chunks: int
    tokens_scored: int
    ppl: float
    nll_stderr: float
    reference: str | None = None
    ppl_ref: float | None = None
    ppl_ratio: float | None = None  # ppl / ppl_ref
    mean_ln_ppl_ratio: float | None = None
    kl: KlStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ArtifactLogits:
    """An artifact opened for full-sequence logits (llama.cpp needs logits_all)."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None) -> None:
        import edgekit

        # every runtime takes logits_all (ONNX Runtime GenAI returns all positions anyway)
        self.session = edgekit.load(path, n_ctx=n_ctx, n_threads=n_threads, logits_all=True)

    def __call__(self, ids: list[int]) -> np.ndarray:
        return self.session.logits(ids)

    def vocab_size(self) -> int:
        return int(self.session.logits([0]).shape[-1])  # token 0 exists in every vocabulary

    def close(self) -> None:
        self.session.close()


class _TransformersLogits:
    """A Hugging Face model directory in float32, as the verifier's reference is."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from edgekit.logs import third_party_to_log

        with third_party_to_log():  # its loading bar goes to the log
            self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def __call__(self, ids: list[int]) -> np.ndarray:
        return torch_logits(self.model, ids)

    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def close(self) -> None:
        self.model = None


def _open_reference(ref: Path, n_ctx: int, n_threads: int | None) -> _ArtifactLogits | _TransformersLogits:
    if not ref.exists():
        raise InputError(f"reference {ref} does not exist",
                         hint="pass the source Hugging Face model directory or an f16 artifact (--reference / "
                              "reference=)")
    if ref.is_dir() and (ref / "config.json").is_file() and any(ref.glob("*.safetensors")):
        return _TransformersLogits(ref)
    return _ArtifactLogits(ref, n_ctx, n_threads)


def chunk_ids(head: list[int], body: list[int], n_ctx: int, max_chunks: int | None) -> list[list[int]]:
    step = n_ctx - len(head)
    if step < 2:
        raise InputError(f"context {n_ctx} is too short to score anything", hint="raise --ctx / n_ctx=")
    chunks = [head + body[i:i + step] for i in range(0, len(body) - step + 1, step)]
    if not chunks:
        raise InputError(f"the text has {len(body)} tokens, fewer than one chunk of {step}",
                         hint="give a longer --text / text= or a smaller --ctx / n_ctx=")
    return chunks[:max_chunks] if max_chunks else chunks


def evaluate(artifact: Path, text: Path, *, reference: Path | None = None, n_ctx: int = 512,
             max_chunks: int | None = None, n_threads: int | None = None,
             progress: ProgressFn | None = None) -> EvalResult:
    """Perplexity of ``artifact`` on ``text``; with ``reference``, KL statistics against it."""
    artifact, text = Path(artifact), Path(text)
    if not text.is_file():
        raise InputError(f"text file {text} does not exist", hint="pass a UTF-8 text file with --text / text=")
    try:
        content = text.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{text} is not UTF-8 text", hint="pass a UTF-8 text file with --text / text=") from e
    report(progress, "load", artifact.name)
    model = _ArtifactLogits(artifact, n_ctx, n_threads)
    ref = None
    try:
        n_ctx = model.session.context_length  # the runtime may clamp to the trained context
        head = model.session.tokenize("", add_special=True)
        chunks = chunk_ids(head, model.session.tokenize(content, add_special=False), n_ctx, max_chunks)
        if reference is not None:
            report(progress, "load reference", Path(reference).name)
            ref = _open_reference(Path(reference), n_ctx, n_threads)
            # before any forward: ids past a smaller reference vocabulary would fail inside it
            if (ref_vocab := ref.vocab_size()) != (vocab := model.vocab_size()):
                raise VocabularyMismatchError(ref_vocab, vocab)
        nll, nll_ref, kls, top1, dp = [], [], [], [], []
        for i, ids in enumerate(chunks):
            first = len(ids) // 2  # score the second half (llama-perplexity)
            target = np.asarray(ids[first:])
            logits = model(ids)[first - 1:-1]
            lp = log_softmax(logits)
            nll.append(-lp[np.arange(len(target)), target])
            if ref is not None:
                rl = ref(ids)[first - 1:-1]
                lr = log_softmax(rl)
                nll_ref.append(-lr[np.arange(len(target)), target])
                kls.append(kl_from_log_probs(lr, lp))
                top1.append(lr.argmax(-1) == lp.argmax(-1))
                dp.append(np.exp(lp[np.arange(len(target)), target]) - np.exp(lr[np.arange(len(target)), target]))
            report(progress, "chunks", "", i + 1, len(chunks))
    finally:
        model.close()
        if ref is not None:
            ref.close()
    all_nll = np.concatenate(nll)
    result = EvalResult(artifact=str(artifact), text=str(text), n_ctx=n_ctx, chunks=len(chunks),
                        tokens_scored=int(all_nll.size), ppl=float(math.exp(all_nll.mean())),
                        nll_stderr=float(all_nll.std(ddof=1) / math.sqrt(all_nll.size)) if all_nll.size > 1 else 0.0)
    if ref is not None:
        ref_nll = np.concatenate(nll_ref)
        kl, d = np.concatenate(kls), np.concatenate(dp)
        result.reference = str(reference)
        result.ppl_ref = float(math.exp(ref_nll.mean()))
        result.ppl_ratio = result.ppl / result.ppl_ref
        result.mean_ln_ppl_ratio = float((all_nll - ref_nll).mean())
        result.kl = KlStats(
            mean=float(kl.mean()), stderr=float(kl.std(ddof=1) / math.sqrt(kl.size)) if kl.size > 1 else 0.0,
            max=float(kl.max()), min=float(kl.min()),
            percentiles={_pname(q): float(np.percentile(kl, q)) for q in KL_PERCENTILES},
            same_top1_pct=float(np.concatenate(top1).mean() * 100),
            mean_delta_p_pct=float(d.mean() * 100), rms_delta_p_pct=float(math.sqrt((d**2).mean()) * 100))
    return result


def _pname(q: float) -> str:
    return f"p{q:g}".replace(".", "_")
