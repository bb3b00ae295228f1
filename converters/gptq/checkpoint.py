"""Write and read the classic GPTQ checkpoint directory.

What a reader finds (what transformers, vLLM and ONNX Runtime GenAI's builder expect):
``config.json`` = the source config + ``quantization_config`` (``quant_method: "gptq"``,
``checkpoint_format: "gptq"``), ``model.safetensors`` with ``{linear}.qweight/.qzeros/
.scales/.g_idx`` for every quantized Linear and float16 for everything else, and the
source's tokenizer and generation files (the ONNX builder refuses a directory without a
tokenizer).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.errors import CorruptFileError, InputError

from ..safetensors_io import SafetensorsFile
from ..source import read_json
from .engine import DAMPENING, GPTQSettings
from .pack import (
    LINEAR_TENSORS,
    GPTQTensors,
    check_bits,
    dequantize,
    pack_linear,
    validate_layout,
    validate_shapes,
)

WEIGHTS = "model.safetensors"
# Files copied from the source directory when present: tokenizer, template, generation defaults.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
              "generation_config.json")


def scheme_name(bits: int, group_size: int) -> str:
    """``int4-g128`` (``int8-gchannel`` for one group per row): the manifest's quant and part of the name."""
    return f"int{bits}-g{group_size if group_size > 0 else 'channel'}"


def checkpoint_name(stem: str, bits: int, group_size: int) -> str:
    """The directory ``--to gptq`` writes (``--to gptq,onnx`` names its ONNX build after it)."""
    return f"{stem}-gptq-{scheme_name(bits, group_size)}"


def copy_side_files(source_dir: Path, out_dir: Path, *, replace: bool = True) -> None:
    """Copy the :data:`SIDE_FILES` the source has; ``replace=False`` keeps what a writer already put there."""
    for name in SIDE_FILES:
        if (source_dir / name).is_file() and (replace or not (out_dir / name).exists()):
            shutil.copy2(source_dir / name, out_dir / name)


def quantization_config(settings: GPTQSettings) -> dict[str, Any]:
    """The ``quantization_config`` block as AutoGPTQ / optimum wrote it (v1 format)."""
    return {
        "quant_method": "gptq", "bits": settings.bits, "group_size": settings.group_size,
        "desc_act": False,  # groups are contiguous (g_idx trivial) even with --act-order: see engine.py
        "sym": True, "damp_percent": settings.dampening if settings.dampening is not None else DAMPENING,
        "true_sequential": True, "static_groups": False, "checkpoint_format": "gptq",
        "modules_in_block_to_quantize": None, "model_name_or_path": None, "model_file_base_name": None,
        "meta": {"quantizer": [f"edgekit:{__version__}", "llmcompressor"], "act_order": settings.act_order},
        # Linears left in float, as GPTQModel reads them (a "-:" pattern excludes the modules it matches)
        **({"dynamic": {f"-:{p}": {} for p in settings.float_linears}} if settings.float_linears else {}),
    }


def write_checkpoint(out_dir: Path, source_dir: Path, config: dict[str, Any], float_tensors: dict[str, np.ndarray],
                     quantized: dict[str, GPTQTensors], settings: GPTQSettings) -> None:
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for name, arr in float_tensors.items():
        tensors[name] = np.ascontiguousarray(arr.astype(np.float16) if arr.dtype.kind == "f" else arr)
    for prefix, t in quantized.items():
        tensors.update({k: np.ascontiguousarray(v) for k, v in t.items(prefix).items()})
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt", "quantizer": f"edgekit {__version__} gptq"})
    cfg = dict(config)
    cfg["quantization_config"] = quantization_config(settings)
    cfg["dtype"] = "float16"
    cfg.pop("torch_dtype", None)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    copy_side_files(source_dir, out_dir)


@dataclass(frozen=True)
class GPTQLayout:
    """What a GPTQ checkpoint directory holds, from its config and safetensors header alone."""

    config: dict[str, Any]
    bits: int
    group_size: int
    linears: tuple[str, ...]  # prefixes of the quantized Linears


def gptq_quantization_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """``quantization_config`` when it says classic GPTQ, else None."""
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "gptq" else None


def read_layout(path: Path) -> GPTQLayout:
    """Validate a GPTQ checkpoint without reading a tensor: config, header offsets, v1 layout.

    A clear error before a long job starts (``--from-gptq``); :class:`GPTQCheckpoint` reads
    the tensors after the same checks.
    """
    path = Path(path)
    cfg_path, weights = path / "config.json", path / WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise InputError(f"{path} is not a GPTQ checkpoint (needs config.json and {WEIGHTS})",
                         hint="pass a directory written by `edgekit convert --to gptq`")
    config = read_json(cfg_path)
    qc = gptq_quantization_config(config)
    if qc is None:
        raw_qc = config.get("quantization_config")
        method = raw_qc.get("quant_method") if isinstance(raw_qc, dict) else raw_qc
        raise InputError(f"{path}: quantization_config.quant_method is {method!r}, not 'gptq'",
                         hint="only classic GPTQ checkpoints are read here")
    bits = check_bits(_required_int(cfg_path, qc, "bits"))
    group_size = _required_int(cfg_path, qc, "group_size")
    header = SafetensorsFile(weights)  # every offset checked against the file size
    linears = tuple(k[: -len(".qweight")] for k in header.tensors if k.endswith(".qweight"))
    if not linears:
        raise CorruptFileError(weights, "holds no .qweight tensor, so no quantized layer",
                               hint="pass a directory written by `edgekit convert --to gptq`")
    for p in linears:
        found = {a: (info.shape, info.storage_dtype) for a in LINEAR_TENSORS
                 if (info := header.tensors.get(f"{p}.{a}")) is not None}
        validate_layout(found, bits, group_size, p)
    return GPTQLayout(config, bits, group_size, linears)


class GPTQCheckpoint:
    """A GPTQ checkpoint read back from disk, independent of the code that quantized it."""

    def __init__(self, path: Path) -> None:
        from safetensors.numpy import load_file

        self.path = Path(path)
        layout = read_layout(self.path)
        self.config, self.bits, self.group_size = layout.config, layout.bits, layout.group_size
        weights = self.path / WEIGHTS
        try:
            raw = load_file(str(weights))
        except Exception as e:  # safetensors raises its own types on truncation
            raise CorruptFileError(weights, f"cannot be read ({e})") from e
        linear_keys = {f"{p}.{a}" for p in layout.linears for a in LINEAR_TENSORS}
        self.float_tensors = {k: v for k, v in raw.items() if k not in linear_keys}
        self.quantized: dict[str, GPTQTensors] = {
            p: GPTQTensors(raw[f"{p}.qweight"], raw[f"{p}.qzeros"], raw[f"{p}.scales"], raw[f"{p}.g_idx"], self.bits)
            for p in layout.linears}
        for p, t in self.quantized.items():
            validate_shapes(t, self.group_size, p)

    def dequantized(self, linear: Callable[[str], np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every weight as float32, quantized Linears dequantized (what the model computes with).

        ``linear(prefix)`` supplies each quantized Linear's weight instead (the RTN baseline:
        same float tensors, only the rounding of the Linears differs).
        """
        out = {k: v.astype(np.float32) for k, v in self.float_tensors.items()}
        for p in self.quantized:
            out[p + ".weight"] = (linear or self.dequantized_one)(p)
        return out

    def dequantized_one(self, prefix: str) -> np.ndarray:
        return dequantize(self.quantized[prefix])

    def float_model(self) -> Any:
        """A float32 transformers model with the dequantized weights (no GPTQ kernels needed)."""
        return float_model_from(self.path, self.config, self.dequantized())


def _required_int(cfg_path: Path, qc: dict[str, Any], key: str) -> int:
    """``quantization_config[key]`` as an int, or a CorruptFileError naming the key."""
    if key not in qc:
        raise CorruptFileError(cfg_path, f"quantization_config has no {key!r}",
                               hint="the GPTQ config is incomplete; re-export the checkpoint")
    try:
        return int(qc[key])
    except (TypeError, ValueError) as e:
        raise CorruptFileError(cfg_path, f"quantization_config.{key} is {qc[key]!r}, not an integer",
                               hint="the GPTQ config is damaged; re-export the checkpoint") from e


def float_model_from(model_dir: Path, config: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
    """Build the architecture from ``config`` and load ``weights`` into it, strictly."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = _special_floats(dict(config))
    cfg.pop("quantization_config", None)
    hf_config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
    hf_config.architectures = cfg.get("architectures")
    from ..layerwise import reference_attention

    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, **reference_attention(hf_config))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    _assemble_parts(model, state, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise CorruptFileError(model_dir, f"weights do not match the architecture (missing {sorted(set(missing) - tied)[:3]}, "
                                          f"unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.tie_weights()
    model.eval()
    return model


_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _special_floats(obj: Any) -> Any:
    """config.json's non-JSON floats back as floats: transformers writes ``inf`` as
    ``{"__float__": "Infinity"}`` (Granite 4's ``time_step_limit``), which ``AutoConfig.for_model``
    does not decode (``from_pretrained`` does)."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in _FLOATS:
            return _FLOATS[obj["__float__"]]
        return {k: _special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_special_floats(v) for v in obj]
    return obj


def _assemble_parts(model: Any, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Parameters a checkpoint stores under another name or in parts, put in place: a MoE's fused
    experts (``mlp.experts.gate_up_proj`` ``[E, 2*ff, h]``) from the per-expert matrices a GPTQ
    checkpoint holds, their rows one after the other (the spec's
    :meth:`~edgekit.converters.gguf.archs.ArchSpec.checkpoint_parts`), Mixtral's router from its
    hub name (:meth:`~edgekit.converters.gguf.archs.ArchSpec.checkpoint_names`)."""
    import torch

    from ..gguf.archs import spec_for

    absent = [(name, p) for name, p in model.named_parameters() if name not in state]
    if not absent:  # every parameter stored whole (dense families)
        return
    spec = spec_for(config)
    for name, p in absent:
        stored = next((n for n in spec.checkpoint_names(name)[1:] if n in state), None)
        if stored is not None:  # under another name (Mixtral's router: block_sparse_moe.gate)
            state[name] = state.pop(stored)
            continue
        parts = spec.checkpoint_parts(name, state.__contains__)
        if parts:
            state[name] = torch.cat([state.pop(part) for part in parts]).reshape(p.shape)


def pack_all(quantized: dict[str, Any]) -> dict[str, GPTQTensors]:
    """QuantizedLinear per module -> checkpoint tensors."""
    return {name: pack_linear(q.codes, q.zeros, q.scales, q.g_idx, q.bits) for name, q in quantized.items()}
