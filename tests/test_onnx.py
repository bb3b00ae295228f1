"""ONNX export (ONNX Runtime GenAI builder) and the ONNX Runtime session, on real ONNX Runtime (CPU)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.converters.onnx.convert import convert_onnx
from edgekit.errors import CorruptFileError, RuntimeLoadError, UnknownChoiceError, VerificationError
from edgekit.runtimes.chat_template import ChatTemplateError

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo model exported once to every ONNX precision (real text: quality means something)."""
    from edgekit.demo import demo_model_dir

    out = tmp_path_factory.mktemp("demo-onnx")
    convert_onnx(demo_model_dir(), out, "fp32,fp16,int4", name="demo")
    return out


def _entries(out: Path) -> dict[str, dict]:
    return {a["quant"]: a for a in json.loads((out / "edgekit.json").read_text())["artifacts"]}


def test_every_precision_is_exported_and_verified(demo_onnx: Path) -> None:
    entries = _entries(demo_onnx)
    assert set(entries) == {"fp32", "fp16", "int4"}
    for quant, e in entries.items():
        d = demo_onnx / e["file"]
        assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= {p.name for p in d.iterdir()}
        v = e["verification"]
        assert v["passed"] and v["correctness"]["passed"] and v["correctness"]["token_mismatches"] == [], quant
        assert e["format"] == "onnx" and e["extra"]["verified_on"] == "cpu"
    fp32, fp16, int4 = (entries[q]["verification"] for q in ("fp32", "fp16", "int4"))
    # quality on the evaluation text: fp32 differs from transformers only in kernel arithmetic
    # (~1e-6 relative on any CPU: KL ~1e-5, bound 1e-4); its argmax can flip only at near-ties,
    # so top-1 is asserted where the source leads by a nat (verify.DECISIVE_NATS), where no
    # kernel's rounding reaches
    assert fp32["mean_kl"] < 1e-4 and fp32["correctness"]["logits"]["top1_decisive"] == 1.0
    assert fp16["mean_kl"] < 1e-3  # fp16 rounding of weights and activations: ~1e-5..1e-4 here
    # int4 really is quantized: measurably off the source (quality), yet it computes what its own
    # weights say as closely as fp16 does (correctness); and the file is much smaller
    assert int4["mean_kl"] > 10 * fp16["mean_kl"] and int4["mean_kl"] > 1e-3
    assert int4["correctness"]["logits"]["rel_err"] < 0.15 and 0 < int4["top1"] < 1
    assert entries["int4"]["size_bytes"] < entries["fp32"]["size_bytes"] / 3


def test_int4_uses_matmulnbits_with_the_requested_block(demo_onnx: Path, tmp_path: Path) -> None:
    import onnx

    from edgekit.demo import demo_model_dir

    def nbits_blocks(model_dir: Path) -> set[int]:
        g = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
        return {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}

    assert nbits_blocks(demo_onnx / _entries(demo_onnx)["int4"]["file"]) == {32}
    res = convert_onnx(demo_model_dir(), tmp_path, "int4", name="d", block_size=128, int4_algo="rtn")
    assert nbits_blocks(tmp_path / res.artifacts[0].file) == {128}
    assert res.artifacts[0].extra["builder_options"]["algo_config"] == "rtn"


def _matmul_bits(model_dir: Path) -> tuple[dict[str, int], dict[str, tuple[str, int, str]]]:
    """MatMulNBits node -> bits; embedding lookup node -> (op, bits, the initializer it reads)."""
    import onnx

    g = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    produced_by = {o: n for n in g.node for o in n.output}
    matmuls, lookups = {}, {}
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "MatMulNBits":
            matmuls[n.name] = attrs["bits"]
        elif n.name.startswith("/model/embed_tokens/Gather"):
            data = n.input[0]
            while data in produced_by:  # through the Reshape of a shared matrix
                data = produced_by[data].input[0]
            lookups[n.name] = (n.op_type, attrs.get("bits", 0), data)
    return matmuls, lookups


def test_int4_keeps_the_lm_head_at_int8(demo_onnx: Path, llama_bpe: Path, tmp_path: Path) -> None:
    # Tied (the demo): one int8 matrix is both the LM head and the token lookup; the body is int4.
    entry = _entries(demo_onnx)["int4"]
    matmuls, lookups = _matmul_bits(demo_onnx / entry["file"])
    head = [n for n in matmuls if n.startswith("/lm_head/")]
    assert len(head) == 1 and matmuls[head[0]] == 8
    assert len(matmuls) > 1 and all(bits == 4 for n, bits in matmuls.items() if n not in head)
    ((op, bits, data),) = lookups.values()
    assert (op, bits, data) == ("GatherBlockQuantized", 8, "lm_head.MatMul.weight_Q8G32")
    assert entry["extra"]["builder_options"]["matmul_mixed_precision"] == "last_matmul:int8"
    # its own weights, head included, were read back and checked
    assert entry["verification"]["correctness"]["passed"]
    # Untied: the head is int8 as well, the separate embedding stays float.
    res = convert_onnx(llama_bpe, tmp_path, "int4", name="u")
    matmuls, lookups = _matmul_bits(tmp_path / res.artifacts[0].file)
    assert {b for n, b in matmuls.items() if n.startswith("/lm_head/")} == {8}
    assert {b for n, b in matmuls.items() if not n.startswith("/lm_head/")} == {4}
    ((op, _, data),) = lookups.values()
    assert op == "Gather" and data == "model.embed_tokens.weight"


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_exports_and_matches_source(arch: str, model_factory: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    res = convert_onnx(model_factory(arch), tmp_path, "fp32")
    (rep,) = res.reports
    assert rep.passed, rep.failures
    assert rep.metrics is not None and rep.metrics.rel_err < 2e-3 and rep.metrics.top1 >= 0.99  # argmax ties of a random net


def test_lora_adapter_is_merged_into_the_export(llama_bpe: Path, lora_adapter: Path, tmp_path: Path) -> None:
    merged = convert_onnx(llama_bpe, tmp_path / "m", "fp32", adapter_dir=lora_adapter)
    assert merged.reports[0].passed, merged.reports[0].failures  # reference: PEFT's unmerged forward
    plain = convert_onnx(llama_bpe, tmp_path / "p", "fp32", verify_artifacts=False)
    with edgekit.load(tmp_path / "m" / merged.artifacts[0].file) as a, \
            edgekit.load(tmp_path / "p" / plain.artifacts[0].file) as b:
        ids = a.tokenize("def merge(a, b):")
        assert np.abs(a.logits(ids) - b.logits(ids)).max() > 1e-2  # the adapter changed the model


def test_a_broken_export_fails_verification_and_leaves_nothing(llama_bpe: Path, tmp_path: Path) -> None:
    # The builder's own `num_hidden_layers` option drops layers: a plausible, silent export bug.
    with pytest.raises(VerificationError, match="logits"):
        convert_onnx(llama_bpe, tmp_path, "fp32", builder_extra={"num_hidden_layers": "1"})
    assert [p.name for p in tmp_path.iterdir() if p.name != "edgekit.json"] == []


def test_gemma3_needs_the_config_fix(model_factory: Callable[..., Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers 5 nests Gemma 3's RoPE per layer type; the raw builder cannot read it.
    from edgekit.converters.onnx import builder

    monkeypatch.setattr(builder, "BUILDER_MODULE", "onnxruntime_genai.models.builder")
    with pytest.raises(builder.BuilderError, match="rope_type"):
        convert_onnx(model_factory("gemma3"), tmp_path, "fp32")
    assert [p.name for p in tmp_path.iterdir() if p.name != "edgekit.json"] == []


def test_interrupted_export_leaves_nothing(llama_bpe: Path, tmp_path: Path) -> None:
    def interrupt(event: object) -> None:
        if getattr(event, "step", "").startswith("build") and "layer" in getattr(event, "message", ""):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_onnx(llama_bpe, tmp_path, "fp32", progress=interrupt, verify_artifacts=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "edgekit.json"] == []


# -- runtime --------------------------------------------------------------------------------------

def test_greedy_generation_equals_raw_onnxruntime_genai(demo_onnx: Path) -> None:
    import onnxruntime_genai as og

    path = demo_onnx / _entries(demo_onnx)["int4"]["file"]
    prompt = "def read_file(path):"
    with edgekit.load(path, n_ctx=512) as s:
        assert s.backend == "onnxruntime-genai"
        ours = s.generate(prompt, max_tokens=24)
        ids = s.tokenize(prompt)
    model = og.Model(str(path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 24, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    out: list[int] = []
    while not gen.is_done() and len(out) < 24:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    eos_cfg = json.loads((path / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = set(eos_cfg if isinstance(eos_cfg, list) else [eos_cfg])
    out = out[: next((i for i, t in enumerate(out) if t in eos), len(out))]
    assert ours.text == og.Tokenizer(model).decode(np.asarray(out, dtype=np.int32))
    assert ours.stats.completion_tokens >= 1 and ours.stats.generation_tokens_per_s > 0


def test_stream_sampling_and_chat(demo_onnx: Path) -> None:
    with edgekit.load(demo_onnx, quant="fp32", n_ctx=512, n_threads=1, graph_optimization="basic") as s:
        whole = s.generate("The function", max_tokens=20)
        assert "".join(s.stream("The function", max_tokens=20)) == whole.text
        a = s.generate("The", max_tokens=16, temperature=0.9, seed=7)
        b = s.generate("The", max_tokens=16, temperature=0.9, seed=7)
        assert a.text == b.text
        rendered = s.render_chat([{"role": "user", "content": "hi"}])
        assert rendered.startswith("<|im_start|>user\nhi<|im_end|>") and rendered.endswith("<|im_start|>assistant\n")
        assert s.chat([{"role": "user", "content": "hi"}], max_tokens=8).stats.completion_tokens >= 1
        # multi-byte text survives the token-by-token stream decoder
        pieces = list(s.stream("é → ✓", max_tokens=12))
        assert "\ufffd" not in "".join(pieces)


def test_ignore_eos_generates_exactly_max_tokens(onnx_copy: Path) -> None:
    # Make the token the model greedily emits first its end-of-generation token: ONNX
    # Runtime GenAI stops there by itself unless told otherwise (benchmarks need N tokens).
    with edgekit.load(onnx_copy) as s:
        first = s.tokenize(s.generate("def", max_tokens=1).text, add_special=False)[0]
    cfg = json.loads((onnx_copy / "genai_config.json").read_text())
    cfg["model"]["eos_token_id"] = [first]
    (onnx_copy / "genai_config.json").write_text(json.dumps(cfg))
    with edgekit.load(onnx_copy) as s:
        stopped = s.generate("def", max_tokens=40)
        assert stopped.finish_reason == "stop" and stopped.stats.completion_tokens == 1
        assert s.generate("def", max_tokens=40, ignore_eos=True).stats.completion_tokens == 40


def test_malicious_chat_template_in_artifact_is_refused(demo_onnx: Path, tmp_path: Path) -> None:
    d = tmp_path / "evil"
    shutil.copytree(demo_onnx / _entries(demo_onnx)["int4"]["file"], d)
    (d / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with edgekit.load(d) as s, pytest.raises(ChatTemplateError):
        s.chat([{"role": "user", "content": "x"}], max_tokens=4)


def _devices() -> tuple[str, list[str]]:
    """What the installed ONNX Runtime reports: the hint's device list, and the GPU devices it lacks."""
    import onnxruntime

    from edgekit.runtimes.onnx import DEVICES

    providers = set(onnxruntime.get_available_providers())
    have = [d.value for d, (_, ep) in DEVICES.items() if ep in providers]
    return ", ".join(have), [d.value for d in DEVICES if d.value not in have]


def test_missing_provider_is_an_error_not_a_cpu_fallback(demo_onnx: Path) -> None:
    listed, missing = _devices()
    assert listed.startswith("cpu")  # every ONNX Runtime build has the CPU provider
    for device in missing:  # a GPU build with every provider has nothing to refuse here
        with pytest.raises(RuntimeLoadError, match=f"available devices: {listed};"):
            edgekit.load(demo_onnx, quant="int4", device=device)
    with pytest.raises(UnknownChoiceError, match="cpu, cuda, tensorrt"):
        edgekit.load(demo_onnx, quant="int4", device="npu")


def test_cli_convert_run_and_errors(demo_onnx: Path, llama_bpe: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(demo_onnx), "--quant", "int4", "-p", "The", "--max-tokens", "8",
                                  "--json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["backend"] == "onnxruntime-genai"
    listed, missing = _devices()
    for device in missing[:1]:
        r = CliRunner().invoke(main, ["run", str(demo_onnx), "--quant", "int4", "-p", "x", "--device", device])
        assert r.exit_code == 1 and f"available devices: {listed};" in r.output
    r = CliRunner().invoke(main, ["run", str(demo_onnx), "--quant", "int4", "-p", "x", "--n-gpu-layers", "4"])
    assert r.exit_code == 1 and "GGUF" in r.output
    r = CliRunner().invoke(main, ["convert", str(llama_bpe), "--to", "onnx", "-q", "int3", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "unknown ONNX quant type 'int3'" in r.output and "fp32, fp16, int8, int4" in r.output
    r = CliRunner().invoke(main, ["convert", str(llama_bpe), "--to", "onnx", "--target", "tpu", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "cpu, cuda, jetson" in r.output
    r = CliRunner().invoke(main, ["convert", str(llama_bpe), "--to", "onnx", "--block-size", "48", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "16, 32, 64, 128, 256" in r.output
    assert not any(tmp_path.iterdir())  # bad options are refused before anything is written


# -- untrusted model directories ------------------------------------------------------------------

@pytest.fixture()
def onnx_copy(demo_onnx: Path, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(demo_onnx / _entries(demo_onnx)["fp32"]["file"], d)
    return d


def test_truncated_external_data_is_refused_before_loading(onnx_copy: Path) -> None:
    data = onnx_copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        edgekit.load(onnx_copy)


def test_external_data_outside_the_directory_is_refused(onnx_copy: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_copy / "model.onnx"), load_external_data=False)
    init = next(i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL)
    for e in init.external_data:
        if e.key == "location":
            e.value = "../../etc/passwd"
    onnx.save(model, str(onnx_copy / "model.onnx"))
    with pytest.raises(CorruptFileError, match="outside its directory"):
        edgekit.load(onnx_copy)


def _external_tensor(location: str):  # type: ignore[no-untyped-def]
    import onnx

    t = onnx.TensorProto(name="hostile", data_type=onnx.TensorProto.FLOAT, dims=[4])
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=key, value=value)
    return t


@pytest.mark.parametrize("where", ["constant", "subgraph"])
def test_external_data_hidden_in_nodes_is_refused(onnx_copy: Path, where: str) -> None:
    # not only graph initializers: a Constant's value and an If branch's initializers load too
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_copy / "model.onnx"), load_external_data=False)
    if where == "constant":
        node = helper.make_node("Constant", [], ["hidden_out"], value=_external_tensor("/etc/shadow"))
    else:
        branch = helper.make_graph([helper.make_node("Identity", ["hostile"], ["y"])], "b", [],
                                   [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
                                   initializer=[_external_tensor("../../etc/shadow")])
        node = helper.make_node("If", ["cond"], ["hidden_out"], then_branch=branch, else_branch=branch)
    model.graph.node.append(node)
    onnx.save(model, str(onnx_copy / "model.onnx"))
    with pytest.raises(CorruptFileError, match="outside its directory"):
        edgekit.load(onnx_copy)


def test_wire_reader_lists_the_same_tensors_as_onnx(demo_onnx: Path) -> None:
    import onnx

    from edgekit.runtimes.onnx_proto import model_tensors

    for entry in _entries(demo_onnx).values():
        path = demo_onnx / entry["file"] / "model.onnx"
        ours = {t.name: t for t in model_tensors(path)}
        model = onnx.load(str(path), load_external_data=False)
        assert model.graph.initializer
        for init in model.graph.initializer:
            t = ours[init.name]
            assert t.external == {e.key: e.value for e in init.external_data}
            assert t.is_external == (init.data_location == onnx.TensorProto.EXTERNAL)
            assert t.inline_bytes == len(init.raw_data)
        constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        assert constants and constants <= set(ours)  # node attributes are walked too


def test_truncated_model_file_is_refused(onnx_copy: Path) -> None:
    model = onnx_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size * 2 // 3])
    with pytest.raises(CorruptFileError, match="not a valid ONNX model"):
        edgekit.load(onnx_copy)


def test_garbage_model_and_config_are_clear_errors(onnx_copy: Path) -> None:
    (onnx_copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(CorruptFileError, match="not a valid ONNX model"):
        edgekit.load(onnx_copy)
    (onnx_copy / "genai_config.json").write_text("{not json")
    r = CliRunner().invoke(main, ["run", str(onnx_copy), "-p", "x"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "GenAI config" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_gptq_to_onnx_carries_the_calibrated_weights(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["convert", "--demo", "--to", "gptq,onnx", "-q", "int4", "--samples", "8",
                                  "--seq-len", "128", "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    arts = {a["format"]: a for a in json.loads(r.output[r.output.index("{"):])["manifest"]["artifacts"]}
    gptq, onnx = arts["gptq"], arts["onnx"]
    assert onnx["quant"] == "int4-gptq" and onnx["extra"]["built_from"].endswith(gptq["file"])
    assert "/lm_head/MatMul" in onnx["extra"]["builder_options"]["nodes_to_exclude"]
    # same model as the GPTQ checkpoint up to int8 activations: KL within a hair of it
    assert onnx["verification"]["mean_kl"] < 1.3 * gptq["verification"]["mean_kl"] + 1e-3


def test_profiler_weight_bytes_match_the_exported_files(demo_onnx: Path) -> None:
    from edgekit.demo import demo_model_dir
    from edgekit.profiles.schema import Backend, OnnxPrecision
    from edgekit.profiles.shapes import model_shapes, onnx_weights

    shapes = model_shapes(json.loads((demo_model_dir() / "config.json").read_text()))
    for quant, e in _entries(demo_onnx).items():
        backend = Backend.CUDA if e["extra"]["builder_ep"] == "cuda" else Backend.CPU  # the graph's I/O dtype
        predicted = onnx_weights(shapes, OnnxPrecision(quant), backend).total_bytes
        actual = (demo_onnx / e["file"] / "model.onnx.data").stat().st_size
        assert abs(predicted - actual) <= 0.01 * actual, (quant, predicted, actual)
