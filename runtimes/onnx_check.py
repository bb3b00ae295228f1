"""Validate an ONNX Runtime GenAI model directory before ONNX Runtime opens it.

The directory comes from outside (downloaded, copied from another machine), so before
handing it to native code we check what a truncated copy or a hostile file would get
wrong: ``genai_config.json`` parses and names a decoder file that exists; the ONNX
protobuf parses; every external-data reference -- of graph initializers, node attributes
and subgraphs -- stays inside the directory (no absolute paths, no ``..``) and lies within
its file's size. The file is walked in place by a small wire-format reader (onnx_proto), never
the weights, so this costs milliseconds and no `onnx` import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.errors import CorruptFileError, ModelNotFoundError

from .onnx_proto import graph_io, model_tensors

GENAI_CONFIG = "genai_config.json"
# CPU and GPU builds both provide the `onnxruntime` module: one or the other per environment.
ONNX_INSTALL = "pip install 'edgekit[onnx]' (CPU) or 'edgekit[onnx-gpu]' (CUDA/Jetson)"


@dataclass(frozen=True)
class OnnxModelInfo:
    config: dict[str, Any]  # genai_config.json
    decoder_file: Path
    external_files: tuple[Path, ...]
    initializer_bytes: int  # sum of external data lengths + inline initializers

    @property
    def context_length(self) -> int:
        return int(self.config["model"].get("context_length") or 0)

    @property
    def sliding_window(self) -> int:
        sw = self.config["model"]["decoder"].get("sliding_window") or {}
        return int(sw.get("window_size") or 0) if isinstance(sw, dict) else 0

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.config["model"].get("eos_token_id", [])
        return {int(e) for e in (eos if isinstance(eos, list) else [eos])}


def read_genai_config(path: Path) -> dict[str, Any]:
    cfg_path = Path(path) / GENAI_CONFIG
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{path} has no {GENAI_CONFIG}",
                                 hint="pass a directory written by `edgekit convert --to onnx` (or ONNX Runtime "
                                      "GenAI's model builder)")
    from edgekit.validate import read_json_bounded

    try:
        cfg = read_json_bounded(cfg_path)  # size first, then parsed (CorruptFileError)
        str(cfg["model"]["decoder"]["filename"])  # presence check: KeyError/TypeError below
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptFileError(cfg_path, f"not a valid GenAI config ({type(e).__name__}: {e})",
                               hint="re-export the model with `edgekit convert --to onnx`") from e
    except CorruptFileError as e:  # too large, not UTF-8, not JSON: said as a GenAI config problem
        raise CorruptFileError(cfg_path, f"not a valid GenAI config ({e.message.split(': ', 1)[-1]})",
                               hint="re-export the model with `edgekit convert --to onnx`") from e
    from edgekit.validate import check_genai_config

    check_genai_config(cfg, cfg_path)  # ONNX Runtime GenAI sizes its buffers from these values
    assert isinstance(cfg, dict)
    return cfg


def _safe_relative(root: Path, location: str, owner: Path) -> Path:
    p = PurePosixPath(location.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise CorruptFileError(owner, f"references external data outside its directory: {location!r}",
                               hint="refusing to load it; re-export the model")
    return root / Path(*p.parts)


# The per-layer state bindings of a hybrid decoder (genai_config.json's ``layer_types``): a layer
# of these types carries these states instead of a KV cache (ONNX Runtime GenAI's builders for
# LFM2, Qwen3.5 and Granite 4). Every other layer type carries the KV cache (and its scales).
_LAYER_STATES: dict[str, frozenset[str]] = {
    "conv": frozenset({"conv"}),  # LFM2's gated short convolution: its last L-1 inputs
    "linear_attention": frozenset({"conv", "recurrent"}),  # Qwen3.5's gated delta-net
    "mamba": frozenset({"conv", "recurrent"}),  # Granite 4's Mamba-2
}
_KV_STATES = frozenset({"key", "value", "key_scale", "value_scale"})


def state_layers(layer_types: list[Any]) -> list[int]:
    """The layers of a hybrid decoder that carry a state instead of a KV cache (by the table above)."""
    return [i for i, t in enumerate(layer_types) if str(t) in _LAYER_STATES]


def _state_kind(binding: str) -> str | None:
    """``past_conv_names`` -> ``conv``; None for a binding that is not per layer."""
    for prefix in ("past_", "present_"):
        if binding.startswith(prefix) and binding.endswith("_names"):
            return binding[len(prefix):-len("_names")]
    return None


def _layers_bound(dec: dict[str, Any], binding: str, graph_in: set[str]) -> list[int]:
    """The layers whose graph inputs/outputs a ``%d`` binding names: all of them, or in a hybrid
    decoder only the layers that have that state: by ``layer_types`` (LFM2), else by the graph
    itself (Qwen3.5's config lists no types: a layer whose every state input exists is a state
    layer, every other layer must have the KV cache)."""
    layers = int(dec.get("num_hidden_layers") or 0)
    kind = _state_kind(binding)
    if kind is None:
        return list(range(layers))
    types = dec.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        def has(layer_type: Any) -> bool:
            states = _LAYER_STATES.get(str(layer_type))
            return kind in states if states is not None else kind in _KV_STATES or kind not in _STATE_KINDS

        return [i for i, t in enumerate(types) if has(t)]
    raw_inputs = dec.get("inputs")
    inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
    state_templates = [t for k, t in inputs.items() if _state_kind(k) in _STATE_KINDS and "%" in str(t)]
    if not state_templates:
        return list(range(layers))
    state = [i for i in range(layers) if all(_name(t, i) in graph_in for t in state_templates)]
    return state if kind in _STATE_KINDS else [i for i in range(layers) if i not in state]


_STATE_KINDS = frozenset({"conv", "recurrent"})


def _name(template: str, i: int) -> str:
    try:
        return template % i
    except (TypeError, ValueError):
        return template


def _check_bindings(cfg: dict[str, Any], decoder: Path) -> None:
    """Every input and output name genai_config.json binds (``%d``: each layer) exists in the graph:
    ONNX Runtime GenAI would otherwise fail in the middle of a generation."""
    try:
        graph_in, graph_out = graph_io(decoder)
    except (OSError, ValueError) as e:  # ProtoError is a ValueError
        raise CorruptFileError(decoder, f"not a valid ONNX model ({e})",
                               hint="the file is truncated or corrupt; re-export or re-copy it") from e
    dec = cfg["model"]["decoder"]
    for section, present in (("inputs", graph_in), ("outputs", graph_out)):
        bindings = dec.get(section, {})
        if not isinstance(bindings, dict) or any(not isinstance(v, str) for v in bindings.values()):
            raise CorruptFileError(decoder.parent / GENAI_CONFIG, f"model.decoder.{section} must map names to strings",
                                   hint="re-export the model with `edgekit convert --to onnx`")
        for key, template in bindings.items():
            names = [_name(template, i) for i in _layers_bound(dec, key, graph_in)] if "%" in template else [template]
            missing = [n for n in names if n not in present]
            if missing:
                raise CorruptFileError(decoder.parent / GENAI_CONFIG,
                                       f"model.decoder.{section}.{key} = {template!r} names {missing[0]!r}, which is "
                                       f"not a graph {section[:-1]} of {decoder.name}",
                                       hint="re-export the model with `edgekit convert --to onnx`")


def check_onnx_dir(path: Path) -> OnnxModelInfo:
    """Validate ``path`` (a GenAI model directory); raise a one-line error naming the problem."""
    path = Path(path)
    cfg = read_genai_config(path)
    from edgekit.validate import check_tokenizer_files

    check_tokenizer_files(path)  # ONNX Runtime GenAI's tokenizer parses these natively
    decoder = _safe_relative(path, str(cfg["model"]["decoder"]["filename"]), path / GENAI_CONFIG)
    if not decoder.is_file() or decoder.stat().st_size == 0:
        raise CorruptFileError(decoder, "missing or empty", hint="the copy is incomplete; copy the whole directory")
    try:
        tensors = model_tensors(decoder)
    except (OSError, ValueError) as e:  # ProtoError is a ValueError; mmap of an odd file raises either
        raise CorruptFileError(decoder, f"not a valid ONNX model ({e})",
                               hint="the file is truncated or corrupt; re-export or re-copy it") from e
    sizes: dict[Path, int] = {}
    total = 0
    for t in tensors:
        if not t.is_external:
            total += t.inline_bytes
            continue
        target = _safe_relative(path, t.external.get("location", ""), decoder)
        if target not in sizes:
            if not target.is_file():
                raise CorruptFileError(decoder, f"needs {target.name}, which is missing",
                                       hint="copy the whole model directory (the .onnx.data file too)")
            sizes[target] = target.stat().st_size
        try:
            offset, length = int(t.external.get("offset") or 0), int(t.external.get("length") or 0)
        except ValueError as e:
            raise CorruptFileError(decoder, f"tensor {t.name} has a non-numeric external offset or length",
                                   hint="re-export the model") from e
        if offset < 0 or length < 0 or offset + length > sizes[target]:
            raise CorruptFileError(
                target, f"truncated: tensor {t.name} needs bytes {offset}..{offset + length}, "
                        f"file has {sizes[target]}", hint="re-copy or re-export the model")
        total += length
    _check_bindings(cfg, decoder)
    return OnnxModelInfo(cfg, decoder, tuple(sizes), total)
