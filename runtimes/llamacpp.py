"""llama.cpp runtime (llama-cpp-python): GGUF artifacts on CPU, CUDA or Metal builds."""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.gguf.inspect import read_gguf
from edgekit.errors import RuntimeLoadError, UnknownChoiceError

from .base import SamplingConfig, Session
from .llama_env import llama_load_params


class LlamaCppSession(Session):
    backend = "llama.cpp"

    def __init__(self, path: Path, *, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
                 n_batch: int = 512, logits_all: bool = False, vocab_only: bool = False, device: str = "cpu",
                 graph_optimization: str | None = None, **llama_kwargs: Any) -> None:
        super().__init__(path)
        if graph_optimization is not None:  # llama.cpp would silently ignore an unknown keyword
            raise RuntimeLoadError("--graph-opt / graph_optimization= applies to ONNX artifacts",
                                   hint="llama.cpp has no graph optimization levels; drop the option")
        n_gpu_layers = _gpu_layers(device, n_gpu_layers)
        summary = read_gguf(self.path)  # untrusted input: validate before llama.cpp parses it
        self.metadata = summary.metadata
        arch = summary.architecture
        trained = int(self.metadata.get(f"{arch}.context_length", n_ctx) or n_ctx)
        self._n_ctx = min(n_ctx, trained) if n_ctx > 0 else trained
        import llama_cpp

        threads = n_threads or max(1, os.cpu_count() or 1)
        try:
            with llama_load_params():
                self.llm = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=self._n_ctx, n_batch=min(n_batch, self._n_ctx),
                    n_threads=threads, n_threads_batch=threads, n_gpu_layers=n_gpu_layers, logits_all=logits_all,
                    vocab_only=vocab_only, verbose=False, **llama_kwargs)
        except TypeError:
            raise  # an option llama-cpp-python does not take: edgekit.load names it
        except Exception as e:  # ValueError, RuntimeError; jinja2's TemplateError from the file's chat template
            raise RuntimeLoadError(f"llama.cpp could not load {self.path}: {type(e).__name__}: {e}",
                                   hint="run with -vv to see llama.cpp's log; the file may need a newer llama.cpp") from e
        if not logits_all:
            _drop_scores(self.llm)
        self._vocab = self.llm._model.vocab
        # BOS/EOS text for chat templates, read once (used on every chat request)
        self._specials = {key: self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")
                          for key, tid in (("bos", self.llm.token_bos()), ("eos", self.llm.token_eos()))
                          if tid is not None and tid >= 0}
        self._llama_cpp = llama_cpp

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def chat_template(self) -> str | None:
        t = self.metadata.get("tokenizer.chat_template")
        return str(t) if t else None

    @property
    def special_tokens(self) -> dict[str, str]:
        return self._specials

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(self.llm.detokenize(list(ids)))

    def is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _sample(self, prompt_ids: list[int], cfg: SamplingConfig) -> Generator[int, None, None]:
        if cfg.seed is not None:
            self.llm.set_seed(cfg.seed)
        greedy = cfg.temperature <= 0
        # Explicit neutral settings: llama-cpp-python's defaults (top_k 40, min_p 0.05) would
        # silently change the distribution users asked for.
        gen: Generator[int, None, None] = self.llm.generate(prompt_ids, temp=0.0 if greedy else cfg.temperature, top_k=1 if greedy else cfg.top_k,
                                 top_p=cfg.top_p, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True)
        return gen

    def logits(self, ids: list[int]) -> np.ndarray:
        if not self.llm._logits_all:  # type: ignore[attr-defined]
            raise RuntimeLoadError("this session was opened without logits_all=True")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def reset(self) -> None:
        # llama-cpp-python reuses the KV cache for a repeated prompt prefix; n_tokens = 0 drops it
        self.llm.reset()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None  # type: ignore[assignment]


def _drop_scores(llm: Any) -> None:
    """Free llama-cpp-python's ``scores`` array of a context opened without logits_all.

    It is allocated as n_batch x n_vocab float32 for every context -- with n_batch =
    min(512, n_ctx) that is the whole context x vocabulary at a short n_ctx (129 x 262,144 x 4 B
    = 129 MiB for Gemma 3 at n_ctx 129; 512 MiB at any n_ctx >= 512) -- but only logits_all
    contexts ever write it: generation samples from llama.cpp's own logits of the last
    position. One row keeps its shape valid for the library's code that slices it."""
    scores = getattr(llm, "scores", None)
    if isinstance(scores, np.ndarray) and scores.ndim == 2 and scores.shape[0] > 1:
        llm.scores = np.zeros((1, scores.shape[1]), dtype=scores.dtype)


def _gpu_layers(device: str, n_gpu_layers: int) -> int:
    """``--device cuda`` means "offload everything" on a GPU build. On a build without GPU offload,
    both it and ``--n-gpu-layers N`` (N != 0) are refused: llama.cpp would otherwise ignore the
    layer count and run on the CPU without a word (the common llama-cpp-python CUDA build failure)."""
    if device == "cpu" and n_gpu_layers == 0:
        return 0
    if device not in ("cpu", "cuda", "gpu", "metal"):
        raise UnknownChoiceError("device for GGUF artifacts", device, ["cpu", "cuda", "metal"])
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        asked = f"--n-gpu-layers / n_gpu_layers={n_gpu_layers}" if device == "cpu" else f"--device / device={device}"
        raise RuntimeLoadError(f"this llama-cpp-python build has no GPU offload for {asked}",
                               hint="run on the CPU with --n-gpu-layers 0 / n_gpu_layers=0 and --device cpu, or reinstall "
                                    "llama-cpp-python with CMAKE_ARGS='-DGGML_CUDA=on' (Metal on macOS): "
                                    "`edgekit doctor` prints the exact command for this host")
    return n_gpu_layers if device == "cpu" else n_gpu_layers or -1
