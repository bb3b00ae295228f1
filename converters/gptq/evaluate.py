"""Held-out quality of a quantized model vs its float32 source: perplexity, mean KL, top-1.

The verifier's probe set (:mod:`..verify`) is short; GPTQ vs RTN differences on a small
model are a few hundredths of a nat, so they are also measured here over a longer stretch
of held-out text (``edgekit/data/heldout.txt`` by default, never used for calibration),
in windows so that only one window's logits are held at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..reference import torch_logits
from ..verify import LogitsFn, kl_from_log_probs, log_softmax, round_metric, token_nll

HELDOUT_TOKENS = 2048  # positions evaluated
WINDOW = 256  # tokens per forward pass


class Reference:
    """A float32 transformers model and its tokenizer (benchmarks compare artifacts with it directly)."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        from transformers import AutoConfig

        from ..layerwise import reference_attention

        attn = reference_attention(AutoConfig.from_pretrained(model_dir))  # soft-capping kept (Gemma 2)
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **attn).eval()

    def encode(self, text: str, add_special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])

    def forward(self, ids: list[int]) -> np.ndarray:
        return torch_logits(self.model, ids)


@dataclass
class HeldoutMetrics:
    ppl: float
    mean_kl: float
    top1: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round_metric(v) for k, v in asdict(self).items()}


def heldout_windows(reference: Reference, text: str | None = None, n_tokens: int = HELDOUT_TOKENS,
                    window: int = WINDOW) -> list[list[int]]:
    """Consecutive windows of the held-out text, each starting with the tokenizer's specials."""
    if text is None:
        from edgekit.demo import heldout_path

        text = heldout_path().read_text(encoding="utf-8")
    ids = list(reference.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])[:n_tokens]
    head = reference.encode("", True)  # BOS when the tokenizer adds one
    return [head + ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]


def heldout_metrics(reference: Reference, windows: list[list[int]], logits: LogitsFn) -> HeldoutMetrics:
    """Compare ``logits`` with the reference model window by window."""
    kls, nll, agree, n = [], 0.0, 0, 0
    for ids in windows:
        ref = reference.forward(ids)
        got = logits(ids)
        lp = log_softmax(got)  # one softmax for both the KL and the NLL
        kls.append(kl_from_log_probs(log_softmax(ref), lp))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        nll += float(token_nll(lp, ids).sum())
        n += len(ids) - 1
    kl = np.concatenate(kls)
    return HeldoutMetrics(ppl=math.exp(nll / max(n, 1)), mean_kl=float(kl.mean()), top1=agree / max(kl.size, 1),
                          n_tokens=n)


def reference_metrics(reference: Reference, windows: list[list[int]]) -> HeldoutMetrics:
    return heldout_metrics(reference, windows, reference.forward)
