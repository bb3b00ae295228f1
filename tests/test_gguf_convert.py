"""GGUF conversion end to end: real transformers models -> real GGUF -> real llama.cpp."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgekit.converters.gguf.archs import gemma3, llama
from edgekit.converters.gguf.convert import convert_gguf
from edgekit.converters.gguf.inspect import read_gguf
from edgekit.errors import VerificationError

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]


def _no_partials(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".edgekit-tmp") or
                 (p.suffix == ".gguf" and p.name not in _manifest_files(out))]
    assert leftovers == []


def _manifest_files(out: Path) -> set[str]:
    m = out / "edgekit.json"
    return {a["file"] for a in json.loads(m.read_text())["artifacts"]} if m.exists() else set()


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_converts_and_matches_source(arch: str, model_factory: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    model = model_factory(arch)
    res = convert_gguf(model, tmp_path, "f16")
    (rep,) = res.reports
    assert rep.passed, rep.failures
    assert rep.token_mismatches == []
    assert rep.metrics is not None
    assert rep.metrics.top1 >= 0.97 and rep.metrics.mean_kl < 2e-3
    summary = read_gguf(tmp_path / res.artifacts[0].file)
    expected_arch = {"mistral": "llama"}.get(arch, arch)
    assert summary.architecture == expected_arch
    assert summary.metadata["tokenizer.chat_template"]
    # Reading it back: every HF weight (minus tied lm_head / rotary caches) has a tensor.
    assert {t.name for t in summary.tensors} >= {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"}


def test_quantized_types_are_real_and_verified(tmp_path: Path) -> None:
    """On the trained demo model: random weights make quantized top-1 agreement noise."""
    from edgekit.demo import demo_model_dir

    res = convert_gguf(demo_model_dir(), tmp_path, "f16,q8_0,q6_k,q4_k_m,q3_k_m")
    by_quant = {a.quant: a for a in res.artifacts}
    assert all(r.passed for r in res.reports)
    sizes = [by_quant[q].size_bytes for q in ("f16", "q8_0", "q6_k", "q4_k_m", "q3_k_m")]
    assert sizes == sorted(sizes, reverse=True)
    types = {t.type for t in read_gguf(tmp_path / by_quant["q4_k_m"].file).tensors}
    assert "Q4_K" in types and "F32" in types  # k-quants apply: rows are multiples of 256
    kls = [by_quant[q].verification["mean_kl"] for q in ("f16", "q8_0", "q4_k_m", "q3_k_m")]  # type: ignore[index]
    assert kls == sorted(kls)  # fewer bits, more divergence
    manifest = json.loads((tmp_path / "edgekit.json").read_text())
    assert manifest["source"]["weights_sha256"] and len(manifest["artifacts"]) == 5
    for a in manifest["artifacts"]:
        assert (tmp_path / a["file"]).stat().st_size == a["size_bytes"]
        assert a["verification"]["passed"] and len(a["sha256"]) == 64


def test_bf16_and_sharded_sources(model_factory: Callable[..., Path], tmp_path: Path) -> None:
    model = model_factory("qwen2", shard=True)
    assert (model / "model.safetensors.index.json").exists()
    res = convert_gguf(model, tmp_path, "bf16")
    assert res.reports[0].passed
    assert {t.type for t in read_gguf(tmp_path / res.artifacts[0].file).tensors} == {"BF16", "F32"}


def test_lora_adapter_is_merged(llama_bpe: Path, lora_adapter: Path, tmp_path: Path) -> None:
    adapter = lora_adapter
    merged = convert_gguf(llama_bpe, tmp_path / "merged", "f16", adapter_dir=adapter)
    assert merged.reports[0].passed, merged.reports[0].failures  # checked against PEFT's own forward
    plain = convert_gguf(llama_bpe, tmp_path / "plain", "f16", verify_artifacts=False)
    m, p = (read_gguf(d / r.artifacts[0].file) for d, r in ((tmp_path / "merged", merged), (tmp_path / "plain", plain)))
    assert m.size_bytes == p.size_bytes
    assert (tmp_path / "merged" / merged.artifacts[0].file).read_bytes() != (tmp_path / "plain" / plain.artifacts[0].file).read_bytes()
    assert json.loads((tmp_path / "merged" / "edgekit.json").read_text())["source"]["adapter"]["sha256"]


# -- the verifier catches broken conversions ---------------------------------------------------

def test_wrong_rope_permutation_is_caught(llama_bpe: Path, tmp_path: Path) -> None:
    broken = dataclasses.replace(llama.SPEC, permute_qk=False)
    with pytest.raises(VerificationError) as e:
        convert_gguf(llama_bpe, tmp_path, "f16", spec=broken)
    assert "logits" in str(e.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".edgekit-tmp*"))


def test_missing_norm_offset_is_caught(model_factory: Callable[..., Path], tmp_path: Path) -> None:
    broken = dataclasses.replace(gemma3.SPEC, norm_shift=0.0)
    with pytest.raises(VerificationError, match="logits"):
        convert_gguf(model_factory("gemma3"), tmp_path, "f16", spec=broken)
    _no_partials(tmp_path)


def test_wrong_pretokenizer_name_is_caught(llama_bpe: Path, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="tokens"):
        convert_gguf(llama_bpe, tmp_path, "f16", pre_override="default")
    _no_partials(tmp_path)


def test_interrupted_run_leaves_nothing_partial(llama_bpe: Path, tmp_path: Path) -> None:
    def interrupt(event: object) -> None:
        if getattr(event, "done", 0) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_gguf(llama_bpe, tmp_path, "f16,q4_k_m", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_quantized_logits_really_differ(llama_bpe: Path, tmp_path: Path) -> None:
    """Guards the verifier itself: quantized weights must change the logits a little, not zero."""
    from edgekit.runtimes.llamacpp import LlamaCppSession

    res = convert_gguf(llama_bpe, tmp_path, "f16,q4_0", verify_artifacts=False)
    ids = [1, 50, 60, 70, 80, 90]
    out = []
    for a in res.artifacts:
        with LlamaCppSession(tmp_path / a.file, n_ctx=64, logits_all=True) as s:
            out.append(s.logits(ids))
    assert not np.allclose(out[0], out[1]) and np.corrcoef(out[0].ravel(), out[1].ravel())[0, 1] > 0.9


def test_memory_stays_near_one_tensor(tmp_path: Path, bpe_tok: Path, llama_bpe: Path) -> None:
    """Streaming: converting must not load the checkpoint; measured in a fresh process."""
    from conftest import build_model

    model = build_model("llama", bpe_tok, tmp_path / "deep", layers=12)  # ~38 MB of f32 weights
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    code = (  # warm up on the small model first: library imports are not tensor memory
        "from edgekit.converters.gguf.convert import convert_gguf; from edgekit.progress import StepTimer;"
        f"convert_gguf({str(llama_bpe)!r}, {str(tmp_path / 'warm')!r}, 'f16', verify_artifacts=False);"
        "import psutil; base = psutil.Process().memory_info().rss; t = StepTimer(interval_s=0.001);"
        f"convert_gguf({str(model)!r}, {str(tmp_path / 'out')!r}, 'f16', verify_artifacts=False, timer=t);"
        "print(base, max(s.peak_rss_bytes for s in t.steps))"
    )
    base, peak = map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    # Loading the checkpoint would add >= 1x the weights; streaming adds about one tensor.
    assert peak - base < 0.25 * weights, (peak - base, weights)


def _write_bf16_llama(out: Path, tokenizer_dir: Path, *, vocab: int, hidden: int, inter: int) -> int:
    """A one-layer bf16 Llama written tensor by tensor straight to safetensors (random values,
    never a whole model in memory); returns the largest tensor's size in bytes."""
    import math
    import shutil

    heads, kv_heads, head_dim = hidden // 128, 4, 128
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "model.layers.0.input_layernorm.weight": (hidden,),
              "model.layers.0.post_attention_layernorm.weight": (hidden,),
              "model.layers.0.self_attn.q_proj.weight": (heads * head_dim, hidden),
              "model.layers.0.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
              "model.layers.0.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
              "model.layers.0.self_attn.o_proj.weight": (hidden, heads * head_dim),
              "model.layers.0.mlp.gate_proj.weight": (inter, hidden), "model.layers.0.mlp.up_proj.weight": (inter, hidden),
              "model.layers.0.mlp.down_proj.weight": (hidden, inter)}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            left = math.prod(shape)
            while left:  # 4M values at a time
                block = (rng.standard_normal(min(left, 1 << 22), dtype=np.float32) * 0.02).view(np.uint32)
                f.write((block >> 16).astype(np.uint16).tobytes())
                left -= block.size
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": vocab, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}))
    for f_ in tokenizer_dir.iterdir():
        if f_.is_file():
            shutil.copy(f_, out / f_.name)
    return max(math.prod(s) * 2 for s in shapes.values())


def test_no_verify_peak_rss_under_largest_tensor_plus_300_mib(tmp_path: Path, bpe_tok: Path) -> None:
    """`--no-verify` f16 conversion streams: the whole process peaks under T + 300 MiB, T the
    largest tensor (a 192 MiB bf16 embedding). Reading that tensor whole, as float32 plus its
    f16 cast, would alone take 3T = 576 MiB; measured as the VmHWM of a fresh interpreter."""
    model = tmp_path / "wide"
    largest = _write_bf16_llama(model, bpe_tok, vocab=49152, hidden=2048, inter=1536)
    assert largest == 192 << 20
    code = (
        "from edgekit.converters.gguf.convert import convert_gguf;"
        f"r = convert_gguf({str(model)!r}, {str(tmp_path / 'out')!r}, 'f16', verify_artifacts=False);"
        "status = open('/proc/self/status').read();"
        "print(next(int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith('VmHWM:')),"
        " r.artifacts[0].size_bytes)"
    )
    peak, size = map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert size > largest // 2 * 1.1  # really converted: ~ the f16 copy of every tensor
    summary = read_gguf(tmp_path / "out" / "wide-f16.gguf")
    assert {t.name: t.type for t in summary.tensors}["token_embd.weight"] == "F16"
    assert peak < largest + (300 << 20), (peak >> 20, largest >> 20)
