"""The profiler for mixtures of experts and hybrid families (issues 16 and 17).

- MoE: llama.cpp's per-tensor types for the stacked ``ffn_*_exps`` tensors, the router and the
  attention tensors of an 8-expert model (its ``n_expert == 8`` rules) and of a 16-expert one,
  checked tensor by tensor against a real ``llama_model_quantize`` of a tiny Qwen3-MoE GGUF
  (written with gguf-py: random weights, hidden 256, expert width 512, dense width 768, vocab 1024);
  memory counts every expert, a decoded token's bytes only the routed ones.
- Hybrid (LFM2): the KV cache only for the attention layers and the convolution state per
  sequence for the others, against what llama.cpp allocates for a tiny LFM2 GGUF (its own log of
  the KV cache and the recurrent-state buffers).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _family import kv_caches, llama_allocations, recurrent_state

from edgekit.converters.gguf.archs import ExpertLayout, TextConfig, spec_for
from edgekit.profiles import costs, shapes, store
from edgekit.profiles.schema import Backend, Runtime
from edgekit.profiles.shapes import ModelShapes, TensorShape

HIDDEN, EXPERT_FF, DENSE_FF, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 256, 512, 768, 4, 2, 64, 1024
N_ACTIVE = 2


def moe_shapes(n_experts: int, layers: int = 4) -> ModelShapes:
    """A Qwen3-MoE's GGUF tensor list (llama.cpp's ``qwen3moe`` names, ggml order), in file order."""
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": DENSE_FF,
           "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "head_dim": HEAD_DIM, "vocab_size": VOCAB, "max_position_embeddings": 1024}
    q, kv, e = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, n_experts
    t = [TensorShape("token_embd.weight", (HIDDEN, VOCAB))]
    for i in range(layers):
        p = f"blk.{i}."
        t += [TensorShape(p + name, ne, i) for name, ne in (
            ("attn_norm.weight", (HIDDEN,)), ("attn_q.weight", (HIDDEN, q)), ("attn_k.weight", (HIDDEN, kv)),
            ("attn_v.weight", (HIDDEN, kv)), ("attn_output.weight", (q, HIDDEN)), ("attn_q_norm.weight", (HEAD_DIM,)),
            ("attn_k_norm.weight", (HEAD_DIM,)), ("ffn_norm.weight", (HIDDEN,)), ("ffn_gate_inp.weight", (HIDDEN, e)),
            ("ffn_gate_exps.weight", (HIDDEN, EXPERT_FF, e)), ("ffn_up_exps.weight", (HIDDEN, EXPERT_FF, e)),
            ("ffn_down_exps.weight", (EXPERT_FF, HIDDEN, e)))]
    t += [TensorShape("output_norm.weight", (HIDDEN,)), TensorShape("output.weight", (HIDDEN, VOCAB))]
    return ModelShapes("qwen3_moe", TextConfig.from_hf(cfg), tuple(t), experts=ExpertLayout(e, N_ACTIVE, EXPERT_FF),
                       f32_tensors=frozenset(x.name for x in t if x.name.endswith("ffn_gate_inp.weight")))


def _write_random_tensors(w: Any, s: ModelShapes, path: Path) -> Path:
    """The profiler's tensor list as random values (f16 matrices, f32 vectors and the tensors llama.cpp
    keeps in f32) after the metadata already in the GGUFWriter ``w``; the file written."""
    rng = np.random.default_rng(0)
    for t in s.tensors:
        a = rng.standard_normal(tuple(reversed(t.ne)), dtype=np.float32) * 0.02
        w.add_tensor(t.name, a.astype(np.float16) if t.is_matrix and t.name not in s.f32_tensors else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_moe_f16(s: ModelShapes, path: Path) -> Path:
    """The f16 GGUF a converter writes for these shapes (router in f32, as llama.cpp's converter keeps it)."""
    import gguf

    assert s.experts is not None
    c = s.config
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    for add, val in ((w.add_context_length, 1024), (w.add_embedding_length, c.hidden_size),
                     (w.add_block_count, c.num_layers), (w.add_feed_forward_length, c.intermediate_size),
                     (w.add_head_count, c.num_heads), (w.add_head_count_kv, c.num_kv_heads),
                     (w.add_key_length, c.head_dim), (w.add_value_length, c.head_dim),
                     (w.add_rope_dimension_count, c.head_dim), (w.add_expert_count, s.experts.n_experts),
                     (w.add_expert_used_count, s.experts.n_active), (w.add_expert_feed_forward_length, EXPERT_FF),
                     (w.add_vocab_size, c.vocab_size), (w.add_file_type, 1)):
        add(val)
    w.add_layer_norm_rms_eps(1e-6)
    return _write_random_tensors(w, s, path)


@pytest.fixture(scope="module")
def moe_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("moe")
    return {e: write_moe_f16(moe_shapes(e), d / f"moe{e}-f16.gguf") for e in (8, 16)}


# 8 experts: llama.cpp's Mixtral rules (attn_v/attn_k Q8_0, attn_output Q5_K for these mixes but not
# q3_k_l, iq3_m's ffn_down on the more-bits layers); 16: the dense rules, layers read from the names
@pytest.mark.parametrize(("n_experts", "quant"), [(8, "q4_k_m"), (8, "q3_k_l"), (8, "q2_k"), (8, "iq3_m"),
                                                   (16, "q4_k_m"), (16, "q3_k_l")])
def test_moe_types_match_llama_quantize(moe_files: dict[int, Path], tmp_path: Path, n_experts: int,
                                        quant: str) -> None:
    import gguf
    import llama_cpp

    s = moe_shapes(n_experts)
    dst = tmp_path / f"moe-{quant}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + quant.upper())
    assert llama_cpp.llama_model_quantize(str(moe_files[n_experts]).encode(), str(dst).encode(),
                                          ctypes.byref(params)) == 0
    reader = gguf.GGUFReader(str(dst))
    predicted = shapes.gguf_weights(s, quant)
    assert {t.name: t.tensor_type.name for t in reader.tensors} == predicted.types
    assert sum(int(t.n_bytes) for t in reader.tensors) == predicted.total_bytes
    if n_experts == 8:  # the expert rules really were exercised
        assert predicted.types["blk.1.attn_v.weight"] == predicted.types["blk.1.attn_k.weight"] == "Q8_0"
    assert predicted.types["blk.0.ffn_gate_inp.weight"] == "F32"  # the router is never quantized


def test_moe_memory_holds_all_experts_decoding_reads_the_active_ones() -> None:
    s = moe_shapes(8)
    w = shapes.gguf_weights(s, "q4_k_m")
    size = {t.name: shapes.tensor_bytes(t.ne, w.types[t.name]) for t in s.tensors}
    experts = sum(v for k, v in size.items() if "_exps" in k)
    rest = sum(v for k, v in size.items() if "_exps" not in k and k != "token_embd.weight")  # router included
    assert w.total_bytes == sum(size.values())
    assert w.per_token_bytes == rest + round(experts * N_ACTIVE / 8)
    assert w.cycled_bytes == experts - round(experts * N_ACTIVE / 8)  # the cache's working set: every expert
    # every expert routed to (n_active = n_experts) reads the whole model: same memory, slower decode
    dense = dataclasses.replace(s, experts=ExpertLayout(8, 8, EXPERT_FF))
    profile = store.get_profile("raspberry-pi-5-8gb")
    a = costs.estimate(s, w, Runtime.LLAMA_CPP, Backend.CPU, profile, ctx=1024)
    b = costs.estimate(dense, shapes.gguf_weights(dense, "q4_k_m"), Runtime.LLAMA_CPP, Backend.CPU, profile, ctx=1024)
    assert (a.weights_bytes, a.kv_bytes) == (b.weights_bytes, b.kv_bytes) and a.gen_tps > b.gen_tps
    assert a.buffer_bytes < b.buffer_bytes  # activations of 2 experts' width per token, not 8
    assert s.matmul_params() < dense.matmul_params() == dense.params - HIDDEN * VOCAB  # all but the lookup


LFM2_TYPES = ["conv", "conv", "full_attention", "conv", "full_attention", "conv"]  # 4 conv, 2 attention


def lfm2_config() -> dict[str, Any]:
    return {"architectures": ["Lfm2ForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": 1152,
            "num_hidden_layers": len(LFM2_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "vocab_size": VOCAB, "max_position_embeddings": 4096, "conv_L_cache": 3, "layer_types": LFM2_TYPES,
            "norm_eps": 1e-5}


def write_lfm2_gguf(path: Path) -> Path:
    """A random-weight LFM2 GGUF: the spec's own metadata, the profiler's tensor list, a byte vocabulary."""
    import gguf

    cfg = lfm2_config()
    spec, c, s = spec_for(cfg), TextConfig.from_hf(cfg), shapes.model_shapes(cfg)
    w = gguf.GGUFWriter(str(path), "lfm2")
    spec.write_hparams(w, c)
    w.add_file_type(1)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(VOCAB - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    return _write_random_tensors(w, s, path)


def test_lfm2_memory_matches_llama_cpp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp's own account of what it allocated: ``llama_kv_cache: size = X MiB (N cells, L layers ...)``
    and ``llama_memory_recurrent: ... R (f32): X MiB``, printed to 2 decimals: 64 sequences make the
    convolution state large enough (0.5 MiB) for a wrong formula to show (L instead of L - 1: 0.75)."""


    s = shapes.model_shapes(lfm2_config())
    assert (s.attention_layers, s.recurrent_layers) == (2, 4)
    assert shapes.gguf_tensor_types(s, "f16")["blk.0.shortconv.conv.weight"] == "F32"  # ggml_ssm_conv reads f32
    path = write_lfm2_gguf(tmp_path / "lfm2.gguf")
    n_seq, n_ctx = 64, 8192
    # one KV stream of n_ctx cells for all sequences
    text = llama_allocations(path, caplog, n_ctx=n_ctx, n_seq_max=n_seq, kv_unified=True)
    (kv,), (r_mib, s_mib) = kv_caches(text), recurrent_state(text)
    assert kv[2] == s.attention_layers and kv[1] == n_ctx
    assert abs(shapes.kv_cache_bytes(s, n_ctx) / 2**20 - kv[0]) <= 0.005
    assert abs(shapes.recurrent_state_bytes(s, n_seq) / 2**20 - r_mib) <= 0.005
    assert s_mib == 0.0  # LFM2 keeps no recurrent (S) state


def test_hybrid_estimate_counts_state_not_kv_for_conv_layers() -> None:
    s = shapes.model_shapes(lfm2_config())
    w = shapes.gguf_weights(s, "q8_0")
    cost = costs.estimate(s, w, Runtime.LLAMA_CPP, Backend.CPU, store.get_profile("raspberry-pi-5-8gb"), ctx=4096)
    assert cost.kv_bytes == KV_HEADS * HEAD_DIM * 2 * 2 * 4096 * 2  # kv x hd x (K,V) x f16 x ctx x 2 attention layers
    assert cost.state_bytes == 4 * HIDDEN * 2 * 4  # 4 conv layers x hidden x (L - 1) x f32
    assert cost.total_bytes == cost.weights_bytes + cost.kv_bytes + cost.state_bytes + cost.buffer_bytes + \
        cost.overhead_bytes


def test_moe_predictions_match_the_real_converter(bpe_tok: Path, tmp_path: Path) -> None:
    """The profiler's Qwen3-MoE tensor list derived from the spec (experts stacked by its composites,
    the router left in the source's float type) and its per-tensor types, against what edgekit's own
    converter and llama.cpp's quantizer write for a tiny random Qwen3MoeForCausalLM."""
    import shutil

    import gguf
    import torch
    import transformers as T

    import edgekit.converters.gguf.convert as convert

    cfg = T.Qwen3MoeConfig(hidden_size=HIDDEN, intermediate_size=DENSE_FF, moe_intermediate_size=EXPERT_FF,
                           num_experts=8, num_experts_per_tok=N_ACTIVE, norm_topk_prob=True, num_hidden_layers=2,
                           num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                           vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                           pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    src = tmp_path / "src"
    T.Qwen3MoeForCausalLM(cfg).save_pretrained(src)
    for f in bpe_tok.iterdir():
        if f.is_file():
            shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    convert.convert_gguf(src, out, "f16,q4_k_m", verify_artifacts=False)
    config = json.loads((src / "config.json").read_text())
    s = shapes.model_shapes(config)
    assert s.experts == ExpertLayout(8, N_ACTIVE, EXPERT_FF)
    for quant in ("f16", "q4_k_m"):
        reader = gguf.GGUFReader(str(next(out.glob(f"*-{quant}.gguf"))))
        assert {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors} == {t.name: t.ne for t in s.tensors}
        predicted = shapes.gguf_weights(s, quant)
        assert {t.name: t.tensor_type.name for t in reader.tensors} == predicted.types
        assert sum(int(t.n_bytes) for t in reader.tensors) == predicted.total_bytes
    # recommend plans the MoE from the files: memory from every expert, speed from the routed ones
    from edgekit.profiles import planner

    plan = planner.plan(out, store.get_profile("raspberry-pi-5-8gb"), ctx=1024)
    q4 = next(c for c in plan.candidates if c.label == "gguf q4_k_m")
    assert q4.types_from == "file" and q4.cost.weights_bytes == shapes.gguf_weights(s, "q4_k_m").total_bytes
