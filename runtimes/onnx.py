"""ONNX Runtime runtime (onnxruntime-genai): ONNX model directories on CPU, CUDA or TensorRT-RTX.

The GenAI library owns the KV cache and sampling; this module maps the Session API onto
it, picks the execution provider the user asked for -- and refuses, listing what this
ONNX Runtime build has, when that provider is missing, instead of quietly running on CPU
-- and exposes the session options that matter on edge boards (threads, graph
optimization level).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._compat import StrEnum
from edgekit.converters.source import read_json
from edgekit.errors import DependencyError, RuntimeLoadError, UnknownChoiceError

from .base import SamplingConfig, Session
from .onnx_check import ONNX_INSTALL, check_onnx_dir

log = logging.getLogger(__name__)


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


# device -> (provider name onnxruntime-genai takes, ONNX Runtime EP that must be present).
# GenAI 0.18 drives TensorRT through the TensorRT-RTX EP (RTX GPUs); on Jetson the GenAI
# runtime uses the CUDA EP of NVIDIA's JetPack builds, so there `--device cuda` is the path.
DEVICES: dict[Device, tuple[str | None, str]] = {
    Device.CPU: (None, "CPUExecutionProvider"),
    Device.CUDA: ("cuda", "CUDAExecutionProvider"),
    Device.TENSORRT: ("NvTensorRtRtx", "NvTensorRTRTXExecutionProvider"),
}


class GraphOptimization(StrEnum):
    """ONNX Runtime graph optimization levels (SessionOptions.graph_optimization_level)."""

    NONE = "none"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


_ORT_LEVELS = {GraphOptimization.NONE: "ORT_DISABLE_ALL", GraphOptimization.BASIC: "ORT_ENABLE_BASIC",
               GraphOptimization.EXTENDED: "ORT_ENABLE_EXTENDED", GraphOptimization.ALL: "ORT_ENABLE_ALL"}


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise DependencyError("onnxruntime-genai", "running ONNX artifacts", ONNX_INSTALL) from e
    return og


def available_devices() -> list[Device]:
    """Devices this environment's ONNX Runtime build can run (its compiled-in providers)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise DependencyError("onnxruntime", "running ONNX artifacts", ONNX_INSTALL) from e
    have = set(onnxruntime.get_available_providers())
    return [d for d, (_, ep) in DEVICES.items() if ep in have]


def ort_distributions() -> list[str]:
    """Installed ONNX Runtime builds (they all provide the `onnxruntime` module)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            version(dist)
            found.append(dist)
        except PackageNotFoundError:
            continue
    return found


def _token_text(entry: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or as {"content": ...}."""
    value = entry.get("content") if isinstance(entry, dict) else entry
    return value if isinstance(value, str) else None


def _parse(enum: type[StrEnum], kind: str, value: str | StrEnum) -> Any:
    try:
        return enum(str(value).lower())
    except ValueError:
        raise UnknownChoiceError(kind, str(value), [m.value for m in enum]) from None


class OnnxSession(Session):
    backend = "onnxruntime-genai"

    def __init__(self, path: Path, *, n_ctx: int = 4096, n_threads: int | None = None, device: str = "cpu",
                 graph_optimization: str | None = None, n_gpu_layers: int = 0, logits_all: bool = False) -> None:
        # logits_all is accepted for API symmetry with llama.cpp: GenAI returns every prompt
        # position's logits anyway. graph_optimization None means ONNX Runtime's full level.
        super().__init__(path)
        if n_gpu_layers:
            raise RuntimeLoadError("--n-gpu-layers / n_gpu_layers= applies to GGUF (llama.cpp) artifacts",
                                   hint="for ONNX artifacts choose the device with --device / device= cuda|tensorrt")
        self.info = check_onnx_dir(self.path)  # untrusted input: validate before native code parses it
        self.device = _parse(Device, "device", device)
        level = _parse(GraphOptimization, "graph optimization level", graph_optimization or GraphOptimization.ALL)
        # every ONNX Runtime build has the CPU EP; importing `onnxruntime` to list the others
        # loads its Python bindings (about 10 MiB) next to GenAI's, so only GPU devices pay it
        available = [Device.CPU] if self.device is Device.CPU else available_devices()
        if self.device not in available:
            clash = ort_distributions()
            fix = (f"{' and '.join(clash)} are both installed and overwrite each other's module: uninstall "
                   "both, then install one" if len(clash) > 1 else
                   "for GPUs install 'edgekit[onnx-gpu]' (see README: Jetson)")
            raise RuntimeLoadError(
                f"ONNX Runtime here has no {DEVICES[self.device][1]} for --device / device={self.device.value}",
                hint=f"available devices: {', '.join(d.value for d in available)}; {fix}")
        og = _import_og()
        trained = self.info.context_length or n_ctx
        self._n_ctx = min(n_ctx, trained) if n_ctx > 0 else trained
        self.threads = n_threads or max(1, os.cpu_count() or 1)
        try:  # og raises plain RuntimeError with ORT's message, from the config's parser too
            config = og.Config(str(self.path))
            config.clear_providers()
            provider = DEVICES[self.device][0]
            if provider is not None:
                config.append_provider(provider)
            # Session options go through GenAI's config overlay (the same keys as genai_config.json).
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1,
                "graph_optimization_level": _ORT_LEVELS[level]}}}}))
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as e:
            raise RuntimeLoadError(f"ONNX Runtime could not load {self.path}: {e}",
                                   hint="re-export it with `edgekit convert --to onnx`; it may need a newer "
                                        "onnxruntime-genai") from e
        self._og = og
        self._eos = self.info.eos_token_ids
        self._vocab = int(self.info.config["model"].get("vocab_size") or 0)
        self._add_special: bool | None = None
        # Read once: the template and special tokens are used on every chat request.
        tok_cfg_path = self.path / "tokenizer_config.json"
        tok_cfg = read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
        template = tok_cfg.get("chat_template")
        jinja = self.path / "chat_template.jinja"
        self._template = (template if isinstance(template, str) and template else
                          jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
        self._specials = {k: t for k in ("bos", "eos") if isinstance(t := _token_text(tok_cfg.get(f"{k}_token")), str)}

    # -- Session API ---------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def chat_template(self) -> str | None:
        return self._template

    @property
    def special_tokens(self) -> dict[str, str]:
        return self._specials

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if self._add_special is not add_special:  # toggling costs a call; most callers keep one mode
            self.tokenizer.update_options(add_special_tokens="true" if add_special else "false")
            self._add_special = add_special
        return [int(t) for t in self.tokenizer.encode(text)]

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return str(self.tokenizer.decode(np.asarray(list(ids), dtype=np.int32))).encode("utf-8")

    def _piece_decoder(self) -> Callable[[int], bytes]:
        # GenAI's tokenizer decodes to text only; its stream holds back split UTF-8 itself.
        stream = self.tokenizer.create_stream()
        return lambda token: str(stream.decode(int(token))).encode("utf-8")

    def is_end(self, token: int) -> bool:
        return token in self._eos

    def _generator(self, n_tokens: int, cfg: SamplingConfig | None = None) -> Any:
        og = self._og
        params = og.GeneratorParams(self.model)
        # Sliding-window layers (Gemma 3) need a KV cache at least one window long.
        max_length = min(max(n_tokens, self.info.sliding_window), self.info.context_length or self._n_ctx)
        # ignore_eos (benchmarks): GenAI stops at EOS by itself unless min_length says otherwise.
        min_length = n_tokens if cfg is not None and cfg.ignore_eos else 0
        opts: dict[str, Any] = {"max_length": max(max_length, n_tokens), "min_length": min_length,
                                "repetition_penalty": 1.0}
        if cfg is not None and cfg.temperature > 0:
            # genai_config's own search defaults (top_k 50) would change the distribution
            # the caller asked for: top_k 0 means "off" here, i.e. the whole vocabulary.
            opts.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                        top_k=cfg.top_k or self._vocab or 1 << 20)
            if cfg.seed is not None:
                opts["random_seed"] = cfg.seed
        else:
            opts.update(do_sample=False, top_k=1)
        params.set_search_options(**opts)
        return og.Generator(self.model, params)

    def _sample(self, prompt_ids: list[int], cfg: SamplingConfig) -> Generator[int, None, None]:
        try:  # og raises plain RuntimeError (ORT's message) for a model its config describes wrongly
            gen = self._generator(len(prompt_ids) + cfg.max_tokens, cfg)
            gen.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        except RuntimeError as e:
            raise RuntimeLoadError(f"ONNX Runtime could not run {self.path}: {e}",
                                   hint="re-export it with `edgekit convert --to onnx`") from e
        try:
            while not gen.is_done():
                try:
                    gen.generate_next_token()
                except RuntimeError as e:
                    raise RuntimeLoadError(f"ONNX Runtime could not run {self.path}: {e}",
                                           hint="re-export it with `edgekit convert --to onnx`") from e
                yield int(gen.get_next_tokens()[0])
        finally:
            gen = None  # frees the KV cache now, not at the next GC

    def logits(self, ids: list[int]) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out = np.asarray(gen.get_output("logits"))
        return out.reshape(-1, out.shape[-1])[-len(ids):].astype(np.float32)

    def close(self) -> None:
        for attr in ("tokenizer", "model"):
            if hasattr(self, attr):
                delattr(self, attr)
