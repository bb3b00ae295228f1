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

A parameter transformers holds whole where the checkpoint stores parts (transformers 5's fused
expert stacks, from a hub checkpoint's per-expert matrices: :meth:`~.gguf.archs.ArchSpec.checkpoint_parts`)
is assembled from its parts, each compared with its own source tensor.

The model is loaded in the source's own dtype (a bf16 model stays bf16: no fp32 copy), and
swapping weights in place keeps the memory at one model whatever the number of artifacts.
A LoRA adapter is merged by PEFT (not by edgekit's own merge, which the artifacts use), and
edgekit's merged tensors are compared with PEFT's once, so a wrong merge is a broken artifact.

Beside it: :mod:`.artifact_weights` (what an artifact's weights are, and the per-tensor check) and
:mod:`.checkpoint_layout` (where each model parameter is in the checkpoint).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report

from .artifact_weights import ArtifactTensor, ArtifactWeights, WeightCheck, rel_err
from .checkpoint_layout import checkpoint_layout, read_param, rows_of, stored_tensor, torch_dtype
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


def default_eval_text() -> tuple[str, str]:
    """(text, description) of the packaged evaluation set, disjoint from any calibration text."""
    try:  # the general mix (prose, code, dialogue) when this edgekit ships it
        from .textsets import eval_text  # type: ignore[attr-defined]

        return str(eval_text()), "packaged: evaluation mix"
    except ImportError:
        from edgekit.demo import heldout_path

        path = heldout_path()
        return path.read_text(encoding="utf-8"), f"packaged: {path.name}"


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

        from .layerwise import LayerwiseLM, empty_model

        if self.threads:
            torch.set_num_threads(self.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.dtype = torch_dtype(self.source)
        # Without an adapter the decoder layers stay on disk and are read one at a time
        # (peak memory: the embedding, the head and one layer). PEFT's merge, the independent
        # check of edgekit's, needs the whole model in memory: a LoRA run keeps it resident.
        self.streamed = self.adapter_dir is None
        if self.adapter_dir is None:
            model: Any = empty_model(self.model_dir, self.dtype)
        else:
            from peft import PeftModel
            from transformers import AutoConfig

            from .layerwise import reference_attention

            attn = reference_attention(AutoConfig.from_pretrained(self.model_dir))
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype, **attn)
            model = PeftModel.from_pretrained(model, self.adapter_dir).merge_and_unload().eval()
        if self.dtype != torch.float32:
            _float32_head(model)
        self.lm = LayerwiseLM(model)
        # the checkpoint name of each parameter (tied weights: the one the source stores)
        from .gguf.archs import spec_for

        spec = spec_for(self.source.config)  # multimodal checkpoints may be saved under other prefixes
        self._stored, self._parts = checkpoint_layout(self.lm, self.source, spec)
        # artifacts name tensors by the checkpoint's names
        self._by_stored = {stored: canon for canon, stored in self._stored.items() if canon not in self._parts}
        self._part_at: dict[str, tuple[str, int, int]] = {}  # part -> (parameter, its rows in it)
        for canon, parts in self._parts.items():
            pos = 0
            for part in parts:
                n = rows_of(self.source.info(part).shape)
                self._part_at[part] = (canon, pos, pos + n)
                pos += n
        self._parked = self.streamed  # resident tensors are read on first use
        if not self.streamed:
            assert self.adapter is not None
            self._check_merge()
        self.token_probes = dict(TOKENIZER_PROBES)
        if getattr(self.tokenizer, "chat_template", None):
            self.token_probes["chat_template"] = str(self.tokenizer.apply_chat_template(CHAT_PROBE, tokenize=False))
        self.logit_ids = [self.encode(t, True) for t in LOGIT_PROBES]
        text, _ = default_eval_text()
        self.logit_ids.append(self.encode(text[:1500], True)[:_PPL_MAX_TOKENS])
        self._scores: ReferenceScores | None = None
        self._windows: EvalWindows | None = None

    # -- tokens -------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])

    @property
    def vocab(self) -> int:
        return int(self.lm.model.get_output_embeddings().weight.shape[0])

    # -- weights ------------------------------------------------------------------------------
    def stored_name(self, name: str) -> str:
        """The checkpoint's name for a model parameter (tied weights: the one the source stores)."""
        return self._stored[self.lm.aliases[name]]

    def _source_tensor(self, name: str) -> Any:
        """A source tensor as stored (bf16 stays bf16), read into its own buffer (a parameter
        stored in parts: assembled from them)."""
        canon = self.lm.aliases[name]
        return read_param(self.source, self.lm, canon, self._stored, self._parts)

    def park(self) -> None:
        """Drop the resident tensors (embedding, head, final norm) until the next torch pass:
        while an artifact's runtime computes, the reference holds no weights. (A LoRA run's
        PEFT-merged model stays: it cannot be read back from disk.)"""
        if self.streamed and not self._parked:
            for name in self.lm.resident_names:
                self.lm.drop(name)
            self._parked = True

    def _unpark(self) -> None:
        if self._parked:
            for name in self.lm.resident_names:
                self.lm.set(name, self._source_tensor(name))
            self._parked = False

    def _source_layer(self, i: int) -> None:
        if self.streamed:
            for name in self.lm.layer_names[i]:
                self.lm.set(name, self._source_tensor(name))

    def _drop_layer(self, i: int) -> None:
        if self.streamed:
            for name in self.lm.layer_names[i]:
                self.lm.drop(name)

    # -- the source model's logits ---------------------------------------------------------
    def _source_hidden(self, seqs: list[list[int]], what: str) -> list[Any]:
        t0 = time.perf_counter()
        n_layers = len(self.lm.layers)

        def tick(done: int, total: int) -> None:
            report(self.progress, "reference", done=done, total=total)
            if done == 1 and total > 1 and what == "evaluation":
                # Say up front when verification will take minutes: each artifact is scored
                # on the same windows, at roughly the reference's speed.
                eta = (time.perf_counter() - t0) * total * 2
                if eta > LONG_VERIFY_S:
                    n = sum(len(s) for s in seqs)
                    log.warning("verification will take about %d min per artifact on this CPU (%d evaluation "
                                "tokens); --eval-tokens / eval_tokens=%d would take a quarter of that",
                                round(eta / 60), n, max(256, n // 4))

        return self.lm.run(seqs, self._source_layer, self._drop_layer, tick if n_layers > 1 else None)

    def _collect(self, windows: EvalWindows, what: str) -> ReferenceScores:
        self._unpark()
        hidden = iter(self._source_hidden([list(w) for w in windows.windows], what))

        def score(ids: list[int], start: int) -> Iterator[np.ndarray]:
            for block in self.lm.replay(ids, next(hidden), start):
                yield block.float().numpy()

        return ReferenceScores.collect(windows, score, self.vocab)

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
        """The source's scores on the evaluation set, computed once for every artifact of the run."""
        if self._scores is None:
            w = self.windows
            report(self.progress, "reference", f"source model on {w.n_scored} evaluation tokens "
                                               f"({len(w.windows)} windows of {len(w.windows[0])}, "
                                               f"{len(self.lm.layers)} layers)")
            self._scores = self._collect(w, "evaluation")
        return self._scores

    def scores_on(self, windows: EvalWindows) -> ReferenceScores:
        """The source's scores on other windows (GPTQ's cross-domain text)."""
        return self._collect(windows, "held-out")

    # -- an artifact's own weights ---------------------------------------------------------
    def artifact_logits(self, weights: ArtifactWeights, expected: Callable[[str], np.ndarray],
                        seqs: list[list[int]]) -> tuple[WeightCheck, list[np.ndarray]]:
        """Float32 logits ``[T, V]`` of the source model carrying the artifact's dequantized
        weights, for each of ``seqs``; each weight is compared with ``expected(name)`` as it is
        loaded. Tensors the artifact does not carry keep the source's values."""
        check = WeightCheck()
        # the artifact's names (any alias of a tied weight, a part of an assembled parameter) by the
        # model parameter they stand for
        known = {n: self.lm.aliases[n] if n in self.lm.aliases else self._by_stored.get(n) or
                 self._part_at.get(n, (None,))[0] for n in weights.names}
        carried = {m: n for n, m in known.items() if m is not None and n not in self._part_at}
        in_parts = {n for n in weights.names if n in self._part_at}
        carried.update({self._part_at[n][0]: n for n in in_parts})
        check.unexpected = [n for n, m in known.items() if m is None]
        changed: list[str] = []

        def load(names: list[str]) -> None:
            for name in names:
                canon = self.lm.aliases[name]
                if canon in self._parts and canon in carried:
                    self.lm.set(name, self._assemble(weights, canon, in_parts, expected, check))
                    changed.append(name)
                elif canon in carried:
                    stored = self.stored_name(name)
                    self.lm.set(name, self._compare(weights.get(carried[canon]), stored, expected, check, name))
                    changed.append(name)
                elif self.streamed:
                    self.lm.set(name, self._source_tensor(name))

        def unload(i: int) -> None:
            if self.streamed:
                self._drop_layer(i)
            else:  # resident (LoRA): the source's values back
                self._restore([n for n in self.lm.layer_names[i] if n in changed], expected)

        if self._parked:  # streamed: every resident tensor from the artifact or the source
            load(self.lm.resident_names)
            self._parked = False
        else:
            load([n for n in self.lm.resident_names if self.lm.aliases[n] in carried])
        try:
            hidden = self.lm.run(seqs, lambda i: load(self.lm.layer_names[i]), unload)
            logits = [np.concatenate([b.float().numpy() for b in self.lm.replay(ids, h)])
                      for ids, h in zip(seqs, hidden, strict=True)]
        finally:
            if self.streamed:  # the artifact's resident tensors go; the source's come back when needed
                self._parked = False
                self.park()
            else:
                self._restore([n for n in changed if n in self.lm.resident_names], expected)
        check.n_tensors = len(check.errors)
        return check, logits

    def _compare(self, t: ArtifactTensor, stored: str, expected: Callable[[str], np.ndarray],
                 check: WeightCheck, name: str | None = None) -> Any:
        """The artifact tensor as a torch tensor of the model's dtype; its error vs the source recorded
        (``name``: the model's name for the parameter, where the checkpoint stores it as another).

        A resident parameter (embedding, head) is overwritten in place; the source is read a
        block of rows at a time (LoRA runs: ``expected``, merged, whole), so a tensor costs one
        copy in the model's dtype plus a block, never its float32 copy."""
        import torch

        param = self.lm.param(name or stored)
        if tuple(param.shape) != t.shape:
            check.errors[stored] = (float("inf"), t.stored_as, t.bits)
            return self._source_tensor(name or stored)
        rows = t.shape[0] if t.shape else 1
        cols = math.prod(t.shape[1:]) if t.shape else 1
        out = param.data.view(rows, cols) if param.device.type != "meta" else \
            torch.empty((rows, cols), dtype=param.dtype)
        if self._fill(t, stored, expected, check, out):
            return out.view(param.shape)
        return self._source_tensor(name or stored)

    def _assemble(self, weights: ArtifactWeights, canon: str, carried: set[str],
                  expected: Callable[[str], np.ndarray], check: WeightCheck) -> Any:
        """A parameter stored in parts (fused experts from per-expert matrices), each part from the
        artifact where it carries it (compared with its source tensor), else from the source."""
        import torch

        param = self.lm.param(canon)
        last = int(param.shape[-1])
        out = torch.empty(tuple(param.shape), dtype=param.dtype).view(-1, last)
        for part in self._parts[canon]:
            _, lo, hi = self._part_at[part]
            shape = self.source.info(part).shape
            dst = out[lo:hi].view(shape[0], -1)
            t = weights.get(part) if part in carried else None
            if t is not None and t.shape != shape:
                check.errors[part] = (float("inf"), t.stored_as, t.bits)
                t = None
            if t is None or not self._fill(t, part, expected, check, dst):
                dst.copy_(stored_tensor(self.source, part).reshape(dst.shape))
        return out.view(param.shape)

    def _fill(self, t: ArtifactTensor, stored: str, expected: Callable[[str], np.ndarray], check: WeightCheck,
              out: Any) -> bool:
        """``t``'s rows copied into ``out`` (``[rows, cols]``, the model's dtype), its error against the
        source tensor ``stored`` recorded; False where its rows do not fit (then recorded as infinite)."""
        import torch

        rows, cols = out.shape
        if self.streamed:
            file = self.source.file_of(stored)

            def want_rows(lo: int, hi: int) -> np.ndarray:
                return file.rows(stored, lo, hi).reshape(-1, cols)
        else:
            whole = np.asarray(expected(stored)).reshape(rows, cols)

            def want_rows(lo: int, hi: int) -> np.ndarray:
                return whole[lo:hi]
        num = den = 0.0
        pos = 0
        for block in t.blocks():
            b = np.asarray(block, dtype=np.float32).reshape(-1, cols)
            if pos + len(b) > rows:
                pos = rows + 1
                break
            a64, w64 = b.astype(np.float64), want_rows(pos, pos + len(b)).astype(np.float64)
            num += float(np.square(a64 - w64).sum())
            den += float(np.square(w64).sum())
            del a64, w64
            out[pos:pos + len(b)] = torch.from_numpy(np.require(b, requirements=["C", "W"]))
            pos += len(b)
        err = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))
        check.errors[stored] = (err if pos == rows else float("inf"), t.stored_as, t.bits)
        return pos == rows

    def _restore(self, names: list[str], expected: Callable[[str], np.ndarray]) -> None:
        import torch

        for name in names:
            canon = self.lm.aliases[name]
            if canon in self._parts:
                shape = tuple(self.lm.param(name).shape)
                data = np.concatenate([np.asarray(expected(p), np.float32).reshape(-1, shape[-1])
                                       for p in self._parts[canon]]).reshape(shape)
            else:
                data = expected(self.stored_name(name))
            self.lm.set(name, torch.from_numpy(np.require(data, np.float32, ["C", "W"])))

    def _check_merge(self) -> None:
        """edgekit's LoRA merge (what the artifacts hold) must equal PEFT's."""
        from edgekit.errors import VerificationError

        assert self.adapter is not None
        worst, where = 0.0, ""
        for name in self.adapter.target_tensors:
            mine = self.adapter.merge(name, self.source.float32(name))
            if name in self._part_at:  # one expert's matrix of a fused stack
                canon, lo, hi = self._part_at[name]
                peft = self.lm.param(canon).float().reshape(-1, mine.shape[-1])[lo:hi].numpy().reshape(mine.shape)
            else:
                peft = self.lm.param(name).float().numpy()
            err = rel_err(mine, peft)
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
