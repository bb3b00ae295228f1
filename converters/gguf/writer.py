"""Stream a Hugging Face checkpoint into a float GGUF (f32 / f16 / bf16).

Two passes over the tensor *headers* and one over the data: the tensor table is planned
from shapes alone, then each tensor is read into its own buffer (no memmap: see
:meth:`..safetensors_io.SafetensorsFile.raw`), merged with the LoRA delta, fixed up for
llama.cpp's layout, cast and written before the next is touched. Peak memory is about
one tensor in float32 plus its cast copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import InputError
from edgekit.progress import ProgressFn, report

from ..lora import LoraAdapter
from ..source import SourceModel
from .archs import ArchSpec, TextConfig
from .vocab import write_vocab

log = logging.getLogger(__name__)

# float output type -> (GGML type name, LlamaFileType member for general.file_type)
FLOAT_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
}


@dataclass(frozen=True)
class _Planned:
    hf_name: str | None  # None for tensors edgekit synthesises (rope_freqs)
    gguf_name: str
    shape: tuple[int, ...]  # HF/numpy order (rows, cols)
    ggml_type: str
    data: np.ndarray | None = field(default=None, compare=False, repr=False)  # synthesised tensors' values


def _cast(data: np.ndarray, ggml_type: str) -> np.ndarray:
    import gguf

    if ggml_type == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    # bf16 has no numpy dtype: gguf-py packs it as raw bytes
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.BF16)


def _nbytes(shape: tuple[int, ...], ggml_type: str) -> int:
    n = int(np.prod(shape)) if shape else 1
    return n * (4 if ggml_type == "F32" else 2)


def plan_tensors(source: SourceModel, spec: ArchSpec, cfg: TextConfig, out_type: str) -> list[_Planned]:
    import gguf

    tmap = gguf.get_tensor_name_map(spec.model_arch, cfg.num_layers)
    float_type = FLOAT_TYPES[out_type][0]
    planned: list[_Planned] = []
    unmapped: list[str] = []
    for info in source.iter_infos():
        if spec.skip(info.name, cfg):
            continue
        gname = tmap.get_name(info.name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            unmapped.append(info.name)
            continue
        # llama.cpp keeps 1-D tensors (norms, biases) in f32: they are tiny and precision-sensitive.
        ggml_type = "F32" if len(info.shape) <= 1 else float_type
        planned.append(_Planned(info.name, gname, info.shape, ggml_type))
    if unmapped:
        raise InputError(f"{len(unmapped)} tensor(s) have no llama.cpp name for {spec.name}, e.g. {unmapped[0]!r}",
                         hint="the checkpoint holds layers this architecture does not have (vision tower? "
                              "extra heads?); convert the text model alone")
    for gname, arr in spec.extra_tensors(cfg).items():
        planned.append(_Planned(None, gname, arr.shape, "F32", arr))
    return planned


def write_float_gguf(
    source: SourceModel,
    out_path: Path,
    *,
    spec: ArchSpec,
    out_type: str,
    adapter: LoraAdapter | None = None,
    name: str | None = None,
    pre_override: str | None = None,
    progress: ProgressFn | None = None,
) -> None:
    import gguf

    cfg = TextConfig.from_hf(source.config)
    planned = plan_tensors(source, spec, cfg, out_type)

    w = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[spec.model_arch])
    try:
        w.add_name(name or source.path.name)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_file_type(int(gguf.LlamaFileType[FLOAT_TYPES[out_type][1]]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        spec.write_hparams(w, cfg)
        embed = next((p for p in planned if p.gguf_name == "token_embd.weight"), None)
        if embed is None:
            raise InputError("the checkpoint has no token embedding", hint="pass a complete causal-LM checkpoint")
        write_vocab(w, source.path, n_vocab=embed.shape[0], add_space_prefix=spec.add_space_prefix,
                    pre_override=pre_override)
        for p in planned:
            if p.ggml_type == "BF16":  # raw bytes: gguf-py wants the shape in bytes and the type named
                byte_shape = (*p.shape[:-1], p.shape[-1] * 2)
                w.add_tensor_info(p.gguf_name, byte_shape, np.dtype(np.uint8), _nbytes(p.shape, p.ggml_type),
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                w.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32 if p.ggml_type == "F32" else np.float16),
                                  _nbytes(p.shape, p.ggml_type))
        w.write_header_to_file(out_path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, p in enumerate(planned, 1):
            if p.hf_name is None:
                assert p.data is not None  # plan_tensors keeps what it synthesised
                data = p.data
            else:
                data = source.float32(p.hf_name)
                if adapter is not None:
                    data = adapter.merge(p.hf_name, data)
                data = spec.transform(p.hf_name, data, cfg)
            w.write_tensor_data(_cast(data, p.ggml_type))
            report(progress, f"write {out_type}", done=i, total=len(planned))
        w.close()
    except BaseException:
        w.close()
        raise
