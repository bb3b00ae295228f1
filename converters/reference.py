"""The source model in transformers, loaded once per conversion run, and what verification needs from it.

One model object serves both halves of verification:

- **quality**: before any artifact is checked, the source model scores the evaluation set once
  (:class:`~.quality.ReferenceScores`, stored compactly) -- every artifact of the run, whatever
  its format, is compared with those scores;
- **correctness**: for each artifact, the artifact's own weights, dequantized, are streamed into
  the same model tensor by tensor (each compared with the source tensor on the way: a permuted,
  transposed or missing tensor shows as an O(1) error however coarse the quantization), and
  the model's logits on the probe set are compared with the artifact's runtime. Bounds are then
  as tight at q2_k as at f16: a wrong layout, graph or tokenizer is caught at every precision.

The model is loaded in the source's own dtype (a bf16 model stays bf16: no fp32 copy), and
swapping weights in place keeps the memory at one model whatever the number of artifacts.
A LoRA adapter is merged by PEFT (not by edgekit's own merge, which the artifacts use), and
edgekit's merged tensors are compared with PEFT's once, so a wrong merge is a broken artifact.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report

from .probes import CHAT_PROBE, LOGIT_PROBES, TOKENIZER_PROBES
from .quality import (
    DEFAULT_EVAL_CTX,
    DEFAULT_EVAL_TOKENS,
    EvalSettings,
    EvalWindows,
    ReferenceScores,
    make_windows,
)

if TYPE_CHECKING:
    from .lora import LoraAdapter
    from .source import SourceModel

log = logging.getLogger(__name__)

_PPL_MAX_TOKENS = 256  # the correctness probe set's longer text
LONG_VERIFY_S = 180.0  # verification longer than this is announced with the flag that shortens it


@dataclass(frozen=True)
class ArtifactTensor:
    """One weight of an artifact, dequantized to float32 in the Hugging Face layout and name.

    ``blocks()`` yields its rows in order, a block of rows at a time, so that a large tensor
    (a 262k x 640 embedding) is never held in float32 whole beside its source copy."""

    hf_name: str
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[np.ndarray]]
    stored_as: str  # the artifact's type for it: "Q4_K", "F16", "int4/32"...
    bits: float  # bits per weight of that type, block scales included

    @classmethod
    def whole(cls, hf_name: str, data: np.ndarray, stored_as: str, bits: float) -> ArtifactTensor:
        return cls(hf_name, tuple(data.shape), lambda: iter([data]), stored_as, bits)


def default_eval_text() -> tuple[str, str]:
    """(text, description) of the packaged evaluation set, disjoint from any calibration text."""
    try:  # the general mix (prose, code, dialogue) when this edgekit ships it
        from .textsets import eval_text  # type: ignore[attr-defined]

        return str(eval_text()), "packaged: evaluation mix"
    except ImportError:
        from edgekit.demo import heldout_path

        path = heldout_path()
        return path.read_text(encoding="utf-8"), f"packaged: {path.name}"


def _torch_dtype(source: SourceModel) -> Any:
    """The dtype the source's matrices are stored in (norms are often kept in float32 beside them)."""
    import torch

    tags = {source.info(n).dtype for n in source.names() if len(source.info(n).shape) >= 2}
    if tags == {"BF16"}:
        return torch.bfloat16
    if tags == {"F16"}:
        return torch.float16
    return torch.float32


@dataclass
class SourceReference:
    model_dir: Path
    source: SourceModel
    adapter: LoraAdapter | None = None
    adapter_dir: Path | None = None
    eval_settings: EvalSettings = field(default_factory=EvalSettings)
    threads: int | None = None
    progress: ProgressFn | None = None

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.dtype = _torch_dtype(self.source)
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        if self.adapter_dir is not None:
            from peft import PeftModel

            # PEFT's own merge, independent of edgekit's (which the artifacts were written with)
            model = PeftModel.from_pretrained(model, self.adapter_dir).merge_and_unload()
        model.eval()
        if self.dtype != torch.float32:
            _float32_head(model)
        self.model = model
        self._params = _named_tensors(model)
        # tied weights appear under several names; the source checkpoint stores one of them
        by_id: dict[int, list[str]] = {}
        for name, t in self._params.items():
            by_id.setdefault(id(t), []).append(name)
        self._stored = {n: next((m for m in names if self.source.has(m)), n)
                        for names in by_id.values() for n in names}
        if self.adapter is not None:
            self._check_merge()
        self.token_probes = dict(TOKENIZER_PROBES)
        if getattr(self.tokenizer, "chat_template", None):
            self.token_probes["chat_template"] = str(self.tokenizer.apply_chat_template(CHAT_PROBE, tokenize=False))
        self.logit_ids = [self.encode(t, True) for t in LOGIT_PROBES]
        text, _ = default_eval_text()
        self.logit_ids.append(self.encode(text[:1500], True)[:_PPL_MAX_TOKENS])
        self._scores: ReferenceScores | None = None
        self._windows: EvalWindows | None = None
        self._dirty: set[str] = set()

    # -- tokens -------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])

    @property
    def vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # -- the model's logits ---------------------------------------------------------------
    def logits(self, ids: list[int]) -> np.ndarray:
        """Float32 logits ``[T, V]`` of the model as it is now (source, or an artifact's weights)."""
        return torch_logits(self.model, ids)

    def score(self, ids: list[int], start: int) -> Iterator[np.ndarray]:
        """Logits of positions ``start..`` only: the head of a window is never materialised."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), logits_to_keep=len(ids) - start)
        yield out.logits[0].float().numpy()

    # -- quality reference ------------------------------------------------------------------
    @property
    def windows(self) -> EvalWindows:
        if self._windows is None:
            s = self.eval_settings
            text, source = (s.text, s.source or "given text") if s.text is not None else default_eval_text()
            ids = self.encode(text, False)
            head = self.encode("", True)  # BOS where the tokenizer adds one
            n_ctx = min(s.ctx, int(self.source.config.get("max_position_embeddings") or s.ctx))
            self._windows = make_windows(ids, head, n_ctx=n_ctx, eval_tokens=s.tokens, source=source)
        return self._windows

    @property
    def scores(self) -> ReferenceScores:
        """The source's scores on the evaluation set, computed once (before any artifact's weights)."""
        if self._scores is None:
            if self._dirty:
                raise AssertionError("reference scores must be computed before an artifact's weights are loaded")
            w = self.windows
            report(self.progress, "reference", f"source model on {w.n_scored} evaluation tokens "
                                               f"({len(w.windows)} windows of {len(w.windows[0])})")

            t0 = time.perf_counter()

            def tick(done: int, total: int) -> None:
                report(self.progress, "reference", done=done, total=total)
                if done == 1 and total > 1:
                    # Say up front when verification will take minutes: each artifact scores the
                    # same windows again, at roughly the reference's speed.
                    per_window = time.perf_counter() - t0
                    eta = per_window * total * 2
                    if eta > LONG_VERIFY_S:
                        log.warning("verification will take about %d min per artifact on this CPU (%d evaluation "
                                    "windows of %.0f s); --eval-tokens / eval_tokens=%d would take a quarter of that",
                                    round(eta / 60), total, per_window, max(256, w.n_scored // 4))

            self._scores = ReferenceScores.collect(w, self.score, self.vocab, tick)
        return self._scores

    def scores_on(self, windows: EvalWindows, expected: Callable[[str], np.ndarray]) -> ReferenceScores:
        """The source's scores on other windows (GPTQ's cross-domain text): source weights restored first."""
        self._restore(self._dirty, expected)
        self._dirty = set()
        return ReferenceScores.collect(windows, self.score, self.vocab)

    # -- an artifact's own weights ---------------------------------------------------------
    def load_weights(self, tensors: Iterable[ArtifactTensor], expected: Callable[[str], np.ndarray]) -> WeightCheck:
        """Copy an artifact's dequantized weights into the model, comparing each with ``expected(name)``.

        Tensors the artifact does not carry keep (or get back) the source's values."""
        import torch

        self.scores  # noqa: B018 -- the source's scores first: they need the source's weights
        check = WeightCheck()
        seen: set[str] = set()
        for t in tensors:
            param = self._params.get(t.hf_name)
            if param is None:
                check.unexpected.append(t.hf_name)
                continue
            if tuple(param.shape) != t.shape:
                check.errors[t.hf_name] = (float("inf"), t.stored_as, t.bits)
                continue
            stored = self._stored[t.hf_name]
            rows = t.shape[0] if t.shape else 1
            want = np.asarray(expected(stored)).reshape(rows, -1)
            flat = param.data.reshape(rows, -1)  # a view: rows are written in place
            num = den = 0.0
            pos = 0
            with torch.no_grad():
                for block in t.blocks():
                    b = block.reshape(-1, want.shape[1])
                    a64, w64 = b.astype(np.float64), want[pos:pos + len(b)].astype(np.float64)
                    num += float(np.square(a64 - w64).sum())
                    den += float(np.square(w64).sum())
                    del a64, w64
                    flat[pos:pos + len(b)].copy_(torch.from_numpy(np.require(b, np.float32, ["C", "W"])))
                    pos += len(b)
            err = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))
            check.errors[t.hf_name] = (err if pos == rows else float("inf"), t.stored_as, t.bits)
            seen.add(stored)
        self._restore(self._dirty - seen, expected)
        self._dirty = seen
        check.n_tensors = len(seen)
        return check

    def _restore(self, names: set[str], expected: Callable[[str], np.ndarray]) -> None:
        import torch

        with torch.no_grad():
            for name in names:
                self._params[name].copy_(torch.from_numpy(np.require(expected(name), np.float32, ['C', 'W'])))

    def _check_merge(self) -> None:
        """edgekit's LoRA merge (what the artifacts hold) must equal PEFT's."""
        from edgekit.errors import VerificationError

        assert self.adapter is not None
        worst, where = 0.0, ""
        for name in self.adapter.target_tensors:
            mine = self.adapter.merge(name, self.source.float32(name))
            peft = self._params[name].float().numpy()
            err = _rel_err(mine, peft)
            if err > worst:
                worst, where = err, name
        if worst > 1e-2:
            raise VerificationError("the LoRA merge", "merge", f"edgekit's merge of {where} differs from PEFT's "
                                                               f"(relative error {worst:.3g})")


def _float32_head(model: Any) -> None:
    """Logits in float32 from a bf16/f16 model: the LM head multiplies in float32, a slice of rows at a time.

    A bf16 logit carries 3 significant digits: too coarse for KL figures of 1e-3. Upcasting
    16k rows of the head at a time bounds the extra memory (16k x 4096 x 4 B = 256 MiB)."""
    import types

    import torch

    head = model.get_output_embeddings()

    def forward(self: Any, h: Any) -> Any:
        x = h.float()
        w = self.weight
        out = torch.empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)
        for i in range(0, w.shape[0], 16384):
            out[..., i:i + 16384] = x @ w[i:i + 16384].float().T
        if getattr(self, "bias", None) is not None:
            out += self.bias.float()
        return out

    head.forward = types.MethodType(forward, head)


def _named_tensors(model: Any) -> dict[str, Any]:
    """Checkpoint name -> parameter/buffer of the model (tied weights appear under every name)."""
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update({k: v for k, v in model.named_buffers(remove_duplicate=False) if v.is_floating_point()})
    return out


def _rel_err(got: np.ndarray, want: np.ndarray, rows: int = 4096) -> float:
    """||got - want|| / ||want||, in float64, a slice of rows at a time (no model-sized temporaries)."""
    n = got.shape[0] if got.ndim else 1
    g, w = got.reshape(n, -1), want.reshape(n, -1)
    num = den = 0.0
    for i in range(0, g.shape[0], rows):
        a, b = g[i:i + rows].astype(np.float64), w[i:i + rows].astype(np.float64)
        num += float(np.square(a - b).sum())
        den += float(np.square(b).sum())
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclass
class WeightCheck:
    """Per-tensor relative error (||dequantized - source|| / ||source||) of an artifact's weights."""

    errors: dict[str, tuple[float, str, float]] = field(default_factory=dict)  # name -> (error, type, bits)
    unexpected: list[str] = field(default_factory=list)
    n_tensors: int = 0

    def failures(self, bound: Callable[[float], float]) -> list[str]:
        out = [f"weights: {self.unexpected[0]!r} has no place in the source model"
               f"{f' (+{len(self.unexpected) - 1} more)' if len(self.unexpected) > 1 else ''}"] if self.unexpected else []
        bad = [(n, e, s, b) for n, (e, s, b) in self.errors.items() if e > bound(b)]
        if bad:
            n, e, s, b = max(bad, key=lambda x: x[1] / bound(x[3]))
            out.append(f"weights: {len(bad)} tensor(s) differ from the source beyond {s}'s rounding, worst "
                       f"{n} (relative error {e:.3g} > {bound(b):g}: permuted, transposed or wrong tensor)")
        return out

    def summary(self) -> dict[str, Any]:
        if not self.errors:
            return {"tensors": 0}
        name, (err, stored, _) = max(self.errors.items(), key=lambda kv: kv[1][0])
        return {"tensors": len(self.errors), "max_rel_err": float(f"{err:.4g}"), "max_rel_err_tensor": name,
                "max_rel_err_type": stored}


def torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    """Float32 logits ``[T, V]`` of a transformers causal LM over one sequence."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0].float().numpy()  # type: ignore[no-any-return]


def check_eval_settings(tokens: int, ctx: int) -> None:
    if tokens < 1:
        raise InputError(f"--eval-tokens / eval_tokens must be at least 1 (got {tokens})",
                         hint=f"{DEFAULT_EVAL_TOKENS} is the default; fewer is faster and noisier")
    if ctx < 64:
        raise InputError(f"--eval-ctx / eval_ctx must be at least 64 (got {ctx})", hint=f"{DEFAULT_EVAL_CTX} is the default")
