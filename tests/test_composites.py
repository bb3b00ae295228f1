"""GGUF tensors assembled from parts of checkpoint tensors (archs.Composite), through the real
writer and the real verification mapping, on a synthetic checkpoint:

- a **split**: one HF tensor ``[2*ff, h]`` written as two GGUF tensors (gate, up), as Granite 4's
  ``shared_mlp.input_linear``;
- a **stack**: E per-expert HF tensors ``[h, ff]`` written as one ``[E, h, ff]``, as a hub MoE
  checkpoint's experts;
- a **split stack**: one fused ``[E, 2*ff, h]`` written as two ``[E, ff, h]`` stacks, as
  transformers 5's in-memory ``gate_up_proj``.

The file's tensors must hold exactly the source rows the pieces name (read back by row here,
independently of the mapping), and the verification mapping must give every source tensor back,
none missing and none unknown -- from an F32 source written as f16 (streamed, cast block by
block, blocks made small so pieces span several) and from a BF16 one written as bf16 (copied
file to file piece by piece).
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import HIDDEN, VOCAB

from edgekit.converters.gguf import writer
from edgekit.converters.gguf.archs import ArchSpec, Composite, Piece, TextConfig, llama
from edgekit.converters.gguf.dequant import GGUFWeights, dequantize_rows
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.converters.source import open_source
from edgekit.errors import InputError

FF, E = 512, 3  # differ from HIDDEN (256) and VOCAB (1024)
SPLIT = "model.layers.0.mlp.input_linear.weight"  # [2*FF, HIDDEN]
FUSED = "model.layers.0.mlp.experts.gate_up_proj"  # [E, 2*FF, HIDDEN]


def expert(e: int) -> str:
    return f"model.layers.0.mlp.experts.{e}.down_proj.weight"  # [HIDDEN, FF]


@dataclasses.dataclass(frozen=True)
class _PartsSpec(ArchSpec):
    def composites(self, shapes: dict[str, tuple[int, ...]], c: TextConfig) -> list[Composite]:
        two = 2 * FF
        return [
            Composite("blk.0.ffn_gate.weight", (FF, HIDDEN), (Piece(SPLIT, 0, FF),)),
            Composite("blk.0.ffn_up.weight", (FF, HIDDEN), (Piece(SPLIT, FF, two),)),
            Composite("blk.0.ffn_down_exps.weight", (E, HIDDEN, FF), tuple(Piece(expert(e), 0, HIDDEN)
                                                                          for e in range(E))),
            Composite("blk.0.ffn_gate_exps.weight", (E, FF, HIDDEN),
                      tuple(Piece(FUSED, e * two, e * two + FF) for e in range(E))),
            Composite("blk.0.ffn_up_exps.weight", (E, FF, HIDDEN),
                      tuple(Piece(FUSED, e * two + FF, (e + 1) * two) for e in range(E))),
        ]


SPEC = _PartsSpec(**{f.name: getattr(llama.SPEC, f.name) for f in dataclasses.fields(llama.SPEC)})


def _checkpoint(out: Path, tok: Path, dtype: str) -> dict[str, np.ndarray]:
    """A one-layer Llama-shaped checkpoint whose feed-forward is stored in parts (float32 values
    exact in ``dtype``)."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN), "model.layers.0.input_layernorm.weight": (HIDDEN,),
              SPLIT: (2 * FF, HIDDEN), FUSED: (E, 2 * FF, HIDDEN), **{expert(e): (HIDDEN, FF) for e in range(E)}}
    tdtype = torch.bfloat16 if dtype == "BF16" else torch.float32
    tensors = {n: torch.from_numpy(rng.standard_normal(s, dtype=np.float32)).to(tdtype) for n, s in shapes.items()}
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FF, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": VOCAB, "max_position_embeddings": 512, "rms_norm_eps": 1e-5}
    (out / "config.json").write_text(json.dumps(cfg))
    for f in tok.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return {n: t.float().numpy() for n, t in tensors.items()}


def _rows(path: Path, name: str) -> np.ndarray:
    """A GGUF tensor's rows (last axis), leading axes flattened, read by offset: not through the mapping."""
    t = next(t for t in read_gguf(path).tensors if t.name == name)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return dequantize_rows(mm, t, 0, math.prod(t.shape[1:]))


@pytest.mark.parametrize(("dtype", "out_type"), [("F32", "f16"), ("BF16", "bf16")])
def test_composites_round_trip(bpe_tok: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               dtype: str, out_type: str) -> None:
    src = _checkpoint(tmp_path / "src", bpe_tok, dtype)
    monkeypatch.setattr(writer, "BLOCK_ELEMS", 3 * HIDDEN)  # pieces of 256..512 rows: many blocks each
    source = open_source(tmp_path / "src")
    out = tmp_path / "parts.gguf"
    writer.write_float_gguf(source, out, spec=SPEC, out_type=out_type, compare_tokenizer=False)

    def exact(x: np.ndarray) -> np.ndarray:  # what the output type holds of a matrix (vectors stay F32)
        return x.astype(np.float16).astype(np.float32) if out_type == "f16" and x.ndim > 1 else x

    tensors = {t.name: t for t in read_gguf(out).tensors}
    assert SPLIT not in str(list(tensors)) and "ffn_gate.weight" in str(list(tensors))
    assert list(tensors["blk.0.ffn_down_exps.weight"].shape) == [FF, HIDDEN, E]  # ggml order
    assert tensors["blk.0.ffn_gate_exps.weight"].type == out_type.upper()
    two = 2 * FF
    fused = src[FUSED].reshape(-1, HIDDEN)
    want = {"blk.0.ffn_gate.weight": src[SPLIT][:FF], "blk.0.ffn_up.weight": src[SPLIT][FF:],
            "blk.0.ffn_down_exps.weight": np.concatenate([src[expert(e)] for e in range(E)]),
            "blk.0.ffn_gate_exps.weight": np.concatenate([fused[e * two:e * two + FF] for e in range(E)]),
            "blk.0.ffn_up_exps.weight": np.concatenate([fused[e * two + FF:(e + 1) * two] for e in range(E)])}
    for name, rows in want.items():
        np.testing.assert_array_equal(_rows(out, name), exact(rows), err_msg=name)

    # verification sees every source tensor, rebuilt from the file's row ranges
    weights = GGUFWeights(out, source, SPEC, "parts").weights()
    assert set(weights.names) == set(src)
    for t in weights:
        assert t.shape == src[t.hf_name].shape
        got = np.concatenate([np.asarray(b).reshape(-1, *t.shape[1:]) for b in t.blocks()]).reshape(t.shape)
        np.testing.assert_array_equal(got, exact(src[t.hf_name]), err_msg=t.hf_name)


def test_composite_that_does_not_fit_the_checkpoint_is_refused(bpe_tok: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path / "src", bpe_tok, "F32")

    @dataclasses.dataclass(frozen=True)
    class _Wrong(_PartsSpec):
        def composites(self, shapes: dict[str, tuple[int, ...]], c: TextConfig) -> list[Composite]:
            return [Composite("blk.0.ffn_down_exps.weight", (E + 1, HIDDEN, FF),
                              tuple(Piece(expert(e), 0, HIDDEN) for e in range(E + 1)))]

    wrong = _Wrong(**{f.name: getattr(SPEC, f.name) for f in dataclasses.fields(SPEC)})
    with pytest.raises(InputError, match=r"experts\.3\.down_proj.*lacks"):
        writer.write_float_gguf(open_source(tmp_path / "src"), tmp_path / "x.gguf", spec=wrong, out_type="f16",
                                compare_tokenizer=False)
