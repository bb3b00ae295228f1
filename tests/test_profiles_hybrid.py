"""The profiler's KV cache and recurrent state for Gemma 4 and Qwen3.5 (issue 17), against what
llama.cpp itself allocates for tiny GGUFs of each (its log: ``llama_kv_cache: size = X MiB (N cells,
L layers, ...), K (f16): X MiB, V (f16): Y MiB`` per cache and ``llama_memory_recurrent: ... R (f32):
X MiB, S (f32): Y MiB``, 2 decimals).

- Gemma 4: the per-layer KV (:meth:`ArchSpec.kv_layers`): sliding layers of head 64 x 2 KV heads,
  full layers of head 128 x 2 KV heads (keys as values: llama.cpp still allocates their V), the last
  two layers sharing earlier layers' KV and holding none; the sliding layers' cache in llama.cpp's
  SWA cache, and without flash attention every V row padded to the widest (the full layers').
- Qwen3.5: the gated delta-net's conv history and state per sequence (``n_embd_r``/``n_embd_s``) and
  the KV of its full-attention layers only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from _family import kv_caches, llama_allocations, recurrent_state, save_with_tokenizer
from test_archs_gemma4 import FULL_HEAD_DIM, HEAD_DIM, KV_HEADS, TYPES, WINDOW, gemma4_config
from test_archs_qwen35 import CONV_DIM, KERNEL, LIN_DIM, V_HEADS, qwen35_config
from test_archs_qwen35 import TYPES as QWEN35_TYPES
from test_archs_qwen35 import build as build_qwen35

from edgekit.converters.gguf.convert import convert_gguf
from edgekit.profiles import shapes

FULL_KV_HEADS = 2  # full layers twice as wide as the sliding ones (256 vs 128 per K row)
MIB = 2**20
HALF = 0.00501  # half the last digit llama.cpp prints (2 decimals of MiB), and float slack


@pytest.fixture(scope="module")
def gemma4_gguf(tmp_path_factory: pytest.TempPathFactory, bpe_tok: Path) -> tuple[Path, dict[str, Any]]:

    import torch
    import transformers as T

    d = gemma4_config().to_dict()  # transformers keeps the full layers' sizes in per_layer_config
    for layer in d["per_layer_config"].values():
        layer["num_key_value_heads"] = FULL_KV_HEADS
    cfg = T.Gemma4TextConfig.from_dict(d)
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("gemma4-kv")
    save_with_tokenizer(T.Gemma4ForCausalLM(cfg), bpe_tok, src)
    res = convert_gguf(src, src / "out", "f16", name="tiny", verify_artifacts=False)
    return src / "out" / res.artifacts[0].file, json.loads((src / "config.json").read_text())


def test_gemma4_kv_layers_are_llama_cpps(gemma4_gguf: tuple[Path, dict[str, Any]],
                                         caplog: pytest.LogCaptureFixture) -> None:
    path, config = gemma4_gguf
    s = shapes.model_shapes(config)
    first_shared = len(TYPES) - 2
    swa, full = KV_HEADS * HEAD_DIM, FULL_KV_HEADS * FULL_HEAD_DIM
    assert [(x.k, x.v, x.window) for x in s.kv_layers] == \
        [(swa, swa, WINDOW) if t == "sliding_attention" else (full, full, None) for t in TYPES[:first_shared]]
    n_full = TYPES[:first_shared].count("full_attention")
    n_swa = first_shared - n_full

    # flash attention on (V rows unpadded), the sliding cache llama.cpp's own size (window + ubatch, padded)
    n_ctx = 4096
    base, sliding = kv_caches(llama_allocations(path, caplog, n_ctx=n_ctx, swa_full=False, flash_attn_type=1))
    assert (base[1], base[2], sliding[2]) == (n_ctx, n_full, n_swa)  # the shared layers hold no cache
    assert sliding[1] < n_ctx  # only the window (and a micro-batch) is kept
    assert abs(n_full * full * n_ctx * 2 / MIB - base[3]) <= HALF and base[4] == base[3]  # keys as values: V too
    assert abs(n_swa * swa * sliding[1] * 2 / MIB - sliding[3]) <= HALF and sliding[4] == sliding[3]
    assert abs(shapes.kv_cache_bytes(s, n_ctx, swa_full=True) / MIB
               - base[0] - sliding[0] * n_ctx / sliding[1]) <= 0.01
    assert shapes.kv_cache_bytes(s, n_ctx) == 2 * (n_full * 2 * full * n_ctx + n_swa * 2 * swa * WINDOW)

    # flash attention off (llama-cpp-python's default) and swa_full (llama.cpp's default): V stored
    # transposed, every row as wide as the widest layer's; the sliding layers hold the whole context
    n_ctx = 2048
    base, sliding = kv_caches(llama_allocations(path, caplog, n_ctx=n_ctx, flash_attn_type=0))
    assert (base[1], sliding[1]) == (n_ctx, n_ctx)
    assert abs(n_swa * full * n_ctx * 2 / MIB - sliding[4]) <= HALF and sliding[4] == 2 * sliding[3]
    assert abs(shapes.kv_cache_bytes(s, n_ctx, v_trans=True, swa_full=True) / MIB - base[0] - sliding[0]) <= 0.01


def test_gemma4_per_layer_embeddings_are_a_lookup(gemma4_gguf: tuple[Path, dict[str, Any]]) -> None:
    """A decoded token reads one row of the per-layer embedding table (llama.cpp's get_rows), as of the
    token embedding; the tied embedding is the LM head and read whole."""
    from edgekit.converters.gguf.inspect import read_gguf

    path, config = gemma4_gguf
    s = shapes.model_shapes(config)
    in_file = {t.name: t for t in read_gguf(path).tensors}
    assert "per_layer_token_embd.weight" in in_file and "output.weight" not in in_file
    plan = shapes.gguf_weights(s, "f16")
    ple = next(t for t in s.tensors if t.name == "per_layer_token_embd.weight")
    assert plan.per_token_bytes == plan.total_bytes - shapes.tensor_bytes(ple.ne, plan.types[ple.name])
    assert ple not in s.decode_matrices() and "token_embd.weight" in {t.name for t in s.decode_matrices()}


def test_qwen35_state_and_kv_are_llama_cpps(qwen_tok: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """16 sequences: 0.38 MiB of conv history (a kernel of K instead of K - 1: 0.5) and 8 MiB of
    delta-net state (key heads instead of value heads: 4)."""
    src = build_qwen35("Qwen3_5ForCausalLM", qwen35_config(), qwen_tok, tmp_path / "src")
    path = tmp_path / "out" / convert_gguf(src, tmp_path / "out", "f16", name="tiny", verify_artifacts=False).artifacts[0].file
    s = shapes.model_shapes(json.loads((src / "config.json").read_text()))
    n_linear = QWEN35_TYPES.count("linear_attention")
    assert (s.recurrent_layers, s.attention_layers) == (n_linear, len(QWEN35_TYPES) - n_linear)
    n_seq, n_ctx = 16, 4096
    text = llama_allocations(path, caplog, n_ctx=n_ctx, n_seq_max=n_seq, kv_unified=True)
    (kv,) = kv_caches(text)
    rs = recurrent_state(text)
    assert (kv[1], kv[2]) == (n_ctx, s.attention_layers)
    assert abs(shapes.kv_cache_bytes(s, n_ctx) / MIB - kv[0]) <= HALF
    conv, state = (x * n_linear * 4 * n_seq / MIB for x in ((KERNEL - 1) * CONV_DIM, LIN_DIM * LIN_DIM * V_HEADS))
    assert abs(conv - rs[0]) <= HALF and abs(state - rs[1]) <= HALF
    assert abs(shapes.recurrent_state_bytes(s, n_seq) / MIB - rs[0] - rs[1]) <= 0.01


def test_edgekit_runtime_allocates_what_the_profiler_counts(gemma4_gguf: tuple[Path, dict[str, Any]],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """edgekit's llama.cpp session keeps llama.cpp's defaults (no flash attention on the CPU, and
    swa_full: the sliding layers cache the whole context), which is what profiles.costs counts."""
    import edgekit
    from edgekit.runtimes.llama_env import route_llama_logs

    path, config = gemma4_gguf
    s = shapes.model_shapes(config)
    route_llama_logs()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="edgekit.llama_cpp")
    n_ctx = 1024
    with edgekit.load(path, n_ctx=n_ctx, n_threads=1):
        text = "\n".join(r.getMessage() for r in caplog.records)
    caches = kv_caches(text)
    assert len(caches) == 2 and all(c[1] == n_ctx for c in caches), text[-2000:]  # full context on both
    assert abs(shapes.kv_cache_bytes(s, n_ctx, v_trans=True, swa_full=True) / MIB - sum(c[0] for c in caches)) <= 0.01
    # and the estimate's KV for a llama.cpp candidate on a CPU is that cache
    from edgekit.profiles.costs import estimate, pad_ctx
    from edgekit.profiles.schema import Backend, Runtime
    from edgekit.profiles.store import get_profile

    cost = estimate(s, shapes.gguf_weights(s, "f16"), Runtime.LLAMA_CPP, Backend.CPU, get_profile("x86-laptop-ddr5"), ctx=n_ctx)
    assert cost.kv_bytes == shapes.kv_cache_bytes(s, pad_ctx(n_ctx), v_trans=True, swa_full=True)
