"""An ONNX Runtime GenAI model's own matrix weights, dequantized and named as in Hugging Face.

The builder stores each projection either as a float ``MatMul`` initializer (``[in, out]``)
or as ``MatMulNBits`` (``weight_Q{bits}G{block}`` codes ``[out, blocks, block*bits/8]``,
``weight_scale`` ``[out, blocks]``, optional packed ``weight_zp``; code ``c`` stands for
``(c - zp) * scale``, ``zp`` defaulting to ``2**(bits-1)``), fusing q/k/v into one
``qkv_proj``. Only the projections are read back: norms, biases and the rotary caches keep
the source's values in the reference, so a wrong one still shows in the logits check.
External data is memory-mapped, one tensor at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_weights import ArtifactTensor, ArtifactWeights
from ..gguf.archs import ArchSpec, TextConfig, spec_for
from ..source import SourceModel

# builder initializer prefix (after "model.layers.N.") -> HF module names it holds, in order
_MODULES: dict[str, tuple[str, ...]] = {
    "attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.q_proj": ("self_attn.q_proj",),
    "attn.k_proj": ("self_attn.k_proj",),
    "attn.v_proj": ("self_attn.v_proj",),
    "attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_proj": ("mlp.gate_proj",),
    "mlp.up_proj": ("mlp.up_proj",),
    "mlp.down_proj": ("mlp.down_proj",),
}


def _modules(spec: ArchSpec) -> dict[str, tuple[str, ...]]:
    """The builder's prefixes -> HF modules for this family: where HF stores q/k/v or gate/up
    fused (Phi-3), the builder's matrices are parts of that one HF tensor (rows, in order)."""
    out = dict(_MODULES)
    out.update((prefix, (module,)) for prefix, module in spec.onnx_modules)
    if spec.fused_qkv:
        out["attn.qkv_proj"] = ("self_attn.qkv_proj",)
    if spec.fused_gate_up:
        out["mlp.gate_proj"] = out["mlp.up_proj"] = ("mlp.gate_up_proj",)
    return out


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.MatMul\.weight(?:_Q(\d+)G(\d+))?$")
_HEAD = re.compile(r"^lm_head\.MatMul\.weight(?:_Q(\d+)G(\d+))?$")
_ONNX_FLOAT = {1: np.float32, 10: np.float16, 11: np.float64}


@dataclass
class OnnxWeights:
    model_dir: Path
    source: SourceModel

    def __post_init__(self) -> None:
        import onnx

        self.graph = onnx.load(str(self.model_dir / "model.onnx"), load_external_data=False).graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.cfg = TextConfig.from_hf(self.source.config)
        self.spec = spec_for(self.source.config)
        self._last: tuple[str, Any] = ("", None)

    def _array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        t = self.inits[name]
        if t.data_location != 1:  # stored in the graph
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        path = (self.model_dir / info["location"]).resolve()
        if self.model_dir.resolve() not in path.parents:  # runtimes.onnx_check refuses these before we get here
            raise AssertionError(f"external data outside the model directory: {path}")
        dtype = _ONNX_FLOAT.get(t.data_type, np.uint8)
        count = int(np.prod(t.dims)) if t.dims else 1
        arr = np.memmap(path, dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=(count,))
        return np.asarray(arr).reshape(tuple(t.dims))

    def _split(self, prefix: str) -> tuple[int, ...]:
        c = self.cfg
        if prefix == "attn.qkv_proj" and not self.spec.fused_qkv:
            return (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim)
        return ()

    def weights(self) -> ArtifactWeights:
        """The graph's matrices by HF name (a fused q/k/v initializer stands for three), each
        dequantized when asked for."""
        where: dict[str, list[tuple[str, int]]] = {}  # HF name -> its (initializer, part)s, in row order
        modules = _modules(self.spec)
        prefixes = list(modules)
        for name in self.inits:
            if (m := _HEAD.match(name)) is not None:
                where["lm_head.weight"] = [(name, 0)]
            elif (m := _LAYER.match(name)) and m.group(2) in modules:
                for k, module in enumerate(modules[m.group(2)]):
                    where.setdefault(f"model.layers.{m.group(1)}.{module}.weight", []).append((name, k))
        def order(part: tuple[str, int]) -> int:
            m = _LAYER.match(part[0])
            return prefixes.index(m.group(2)) if m else 0

        for parts in where.values():  # gate before up: the builder's prefix order is HF's row order
            parts.sort(key=order)
        return ArtifactWeights(tuple(where), lambda hf: self._joined(hf, where[hf]))

    def _joined(self, hf: str, parts: list[tuple[str, int]]) -> ArtifactTensor:
        if len(parts) == 1:
            return self._tensor(hf, *parts[0])
        pieces = [self._tensor(hf, *p) for p in parts]
        data = np.concatenate([next(iter(t.blocks())) for t in pieces])
        return ArtifactTensor.whole(hf, data, pieces[0].stored_as, pieces[0].bits)

    def _tensor(self, hf: str, init: str, part: int) -> ArtifactTensor:
        if init != self._last[0]:  # q, k and v are asked for in turn: split the fused matrix once
            self._last = (init, self._matrix(init))
        w, stored, nbits, parts = self._last[1]
        rows = [0, *(int(x) for x in np.cumsum(parts))] if parts else [0, w.shape[0]]
        return ArtifactTensor.whole(hf, w[rows[part]:rows[part + 1]], stored, nbits)

    def _matrix(self, init: str) -> tuple[np.ndarray, str, float, tuple[int, ...]]:
        """(float32 [out, in] matrix, stored type, bits per weight, fused row split) of an initializer."""
        m = _HEAD.match(init) or _LAYER.match(init)
        assert m is not None
        bits, block = m.group(m.re.groups - 1), m.group(m.re.groups)
        parts = self._split(m.group(2)) if m.re is _LAYER else ()
        if bits is None:
            w = np.asarray(self._array(init), dtype=np.float32).T  # MatMul B is [in, out]
            stored = {1: "fp32", 10: "fp16"}.get(self.inits[init].data_type, "float")
            return w, stored, 16.0 if stored == "fp16" else 32.0, parts
        return self._nbits(init, int(bits), int(block)), f"int{bits}/{block}", int(bits) + 16 / int(block), parts

    def _nbits(self, name: str, bits: int, block: int) -> np.ndarray:
        base = name.rsplit("_Q", 1)[0]
        codes = self._array(name)  # [N, blocks, block*bits/8] uint8
        n, blocks = codes.shape[0], codes.shape[1]
        scales = np.asarray(self._array(f"{base}_scale"), dtype=np.float32).reshape(n, blocks)
        q = _unpack(codes.reshape(n, -1), bits).reshape(n, blocks, block).astype(np.float32)
        zp_name = f"{base}_zp"
        if zp_name in self.inits:
            zp = _unpack(np.asarray(self._array(zp_name)).reshape(n, -1), bits)[:, :blocks].astype(np.float32)
        else:
            zp = np.full((n, blocks), float(1 << (bits - 1)), dtype=np.float32)
        w = (q - zp[..., None]) * scales[..., None]
        k = int(self._node_attr(name, "K") or blocks * block)
        return w.reshape(n, blocks * block)[:, :k]

    def _node_attr(self, init: str, attr: str) -> Any:
        import onnx

        for node in self.graph.node:
            if node.op_type == "MatMulNBits" and init in node.input:
                for a in node.attribute:
                    if a.name == attr:
                        return onnx.helper.get_attribute_value(a)
        return None


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 words -> codes, lowest bits first (ONNX Runtime's MatMulNBits order)."""
    if bits == 8:
        return packed
    if bits == 4:
        return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    raise AssertionError(f"MatMulNBits with {bits} bits is not produced by edgekit")
