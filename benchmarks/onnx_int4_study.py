"""ONNX int4 variants against GGUF q4_k_m on one evaluation set: what the LM head costs.

    python benchmarks/onnx_int4_study.py                       # the packaged demo model
    python benchmarks/onnx_int4_study.py --gemma --eval-tokens 2048 --threads 1
    python benchmarks/onnx_int4_study.py MODEL_DIR --variants edgekit,shared-int4

Each variant is one set of ONNX Runtime GenAI builder options (every option that differs
between variants is spelled out, so a variant does not depend on edgekit's defaults; the
``edgekit`` row is whatever ``convert_onnx`` builds today). All artifacts share one reference
pass over the evaluation set, so the figures are comparable: file size of the weights
(``model.onnx`` + external data; the tokenizer files of the directory are left out, as a GGUF
carries its vocabulary compactly) and of the RoPE caches inside it, mean KL with its p99,
same top-1, perplexity change, the ratio of mean KL and of size to GGUF q4_k_m's (with and
without the RoPE caches, which a GGUF does not store), and how each file stores the LM head
and the embedding (read back from ``model.onnx`` and the GGUF). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Variant:
    name: str
    note: str
    # raw builder options on top of edgekit's; None = edgekit's own defaults, nothing added
    options: dict[str, str] | None = field(default=None)


# Options every study variant sets, so that none inherits edgekit's current choice.
_BASE = {"algo_config": "k_quant", "block_size": "32", "matmul_mixed_precision": "", "accuracy_level": "4"}

VARIANTS: tuple[Variant, ...] = (
    Variant("edgekit", "what convert_onnx builds by default"),
    Variant("shared-int4", "tied head+embedding as one int4 matrix (edgekit before #13)",
            {**_BASE, "shared_embeddings": "true"}),
    Variant("shared-int4-acc1", "shared int4, float32 activations (accuracy_level=1)",
            {**_BASE, "shared_embeddings": "true", "accuracy_level": "1"}),
    Variant("shared-int4-b16", "shared int4, block 16",
            {**_BASE, "shared_embeddings": "true", "block_size": "16"}),
    Variant("shared-int8-head", "tied head+embedding as one int8 matrix (last_matmul:int8)",
            {**_BASE, "shared_embeddings": "true", "matmul_mixed_precision": "last_matmul:int8"}),
    Variant("shared-int8-head-b64", "shared int8 matrix, block 64 everywhere",
            {**_BASE, "shared_embeddings": "true", "matmul_mixed_precision": "last_matmul:int8", "block_size": "64"}),
    Variant("shared-int8-head-b128", "shared int8 matrix, block 128 everywhere",
            {**_BASE, "shared_embeddings": "true", "matmul_mixed_precision": "last_matmul:int8",
             "block_size": "128"}),
    # untied: the builder's k_quant/rtn passes quantize MatMuls only, so the lookup stays float
    # (op_types_to_quantize=MatMul/Gather changes nothing there)
    Variant("untied-int8-head", "untied: int8 LM head, separate float embedding",
            {**_BASE, "shared_embeddings": "false", "matmul_mixed_precision": "last_matmul:int8"}),
    Variant("rtn-shared-int4", "round-to-nearest, shared int4 matrix",
            {**_BASE, "algo_config": "rtn", "shared_embeddings": "true"}),
    Variant("rtn-shared-int8-head", "round-to-nearest, shared int8 matrix",
            {**_BASE, "algo_config": "rtn", "shared_embeddings": "true", "matmul_mixed_precision": "last_matmul:int8"}),
    Variant("k_quant_mixed", "shared, int8 head + llama.cpp's mixed layers at int8",
            {**_BASE, "shared_embeddings": "true", "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}),
)
_BY_NAME = {v.name: v for v in VARIANTS}


def graph_storage(model_dir: Path) -> dict[str, str]:
    """How model.onnx stores the LM head and the token embedding (op and bits)."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    out = {"lm_head": "?", "embedding": "?"}
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.name.startswith("/lm_head/MatMul"):
            out["lm_head"] = f"int{attrs['bits']}" if node.op_type == "MatMulNBits" else "float"
        elif node.name.startswith("/model/embed_tokens/Gather"):
            if node.op_type == "GatherBlockQuantized":
                shared = any(i.startswith("/model/embed_tokens/Reshape") for i in node.input)
                out["embedding"] = f"int{attrs.get('bits', 4)}{' (shared)' if shared else ''}"
            else:
                shared = any(i.startswith("/model/embed_tokens/Transpose") for i in node.input)
                out["embedding"] = f"float{' (shared)' if shared else ''}"
    return out


def gguf_storage(path: Path) -> dict[str, str]:
    """The GGUF types of the output (LM head) and token-embedding tensors; a tied model has no output."""
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name.lower() for t in GGUFReader(str(path)).tensors}
    emb = types.get("token_embd.weight", "?")
    return {"lm_head": types.get("output.weight", f"{emb} (tied)"), "embedding": emb}


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.name.startswith("model.onnx"))


def rope_bytes(model_dir: Path) -> int:
    """The builder's precomputed RoPE cos/sin caches (max positions x rotary dim / 2, float32):
    stored in the ONNX file, computed at load time by llama.cpp, whatever the quant type."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    size = {1: 4, 10: 2, 16: 2}
    return sum(math.prod(t.dims) * size.get(t.data_type, 4) for t in graph.initializer
               if t.name.startswith(("cos_cache", "sin_cache")))  # Gemma 3: *_global and *_local


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("--gemma", action="store_true", help="use Gemma 3 270M (benchmarks/prepare_gemma.py)")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                    help=f"comma-separated, from: {', '.join(_BY_NAME)}")
    ap.add_argument("--gguf", default="q4_k_m", help="GGUF types to compare with (q4_k_m first: the ratios' base)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/onnx-int4"))
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    ap.add_argument("--reuse", action="store_true", help="reuse the variant directories a previous run built in OUT")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(_BY_NAME)}")

    from _results import quality_run, save_results

    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.converters.onnx.convert import convert_onnx
    from edgekit.fsutil import write_json_atomic
    from edgekit.ui import format_table, human_bytes

    run = quality_run(args.model, args.gemma, args.out, args.eval_tokens, args.threads, "s")
    model, out, inputs, timer, n_params, common = run.model, run.out, run.inputs, run.timer, run.n_params, run.common
    t0 = time.perf_counter()

    # Every variant is built before the reference model is loaded: the builder (a child process)
    # holds the whole source model while it quantizes (9 GiB for Gemma 3 270M).
    built = {name: _build(partial(convert_onnx, model, out / name, "int4", builder_extra=_BY_NAME[name].options,
                                  verify_artifacts=False, **common), out / name, args.reuse)
             for name in names}
    rows: list[dict[str, Any]] = []
    partial_json = out / "partial.json"  # a long run that dies keeps what it measured
    for q in args.gguf.split(","):
        a = _measured(partial(convert_gguf, model, out / "gguf", q, **common), inputs, out / "gguf", "gguf",
                      args.threads)
        rows.append(_row(f"gguf {a.quant}", "gguf", a.verification, a.size_bytes, 0, a.size_bytes,
                         gguf_storage(out / "gguf" / a.file), ""))
        write_json_atomic(partial_json, {"rows": rows})
    for name in names:
        d, entry = built[name]
        verification = _verify_existing(inputs, d, timer, args.threads)
        rows.append(_row(f"onnx {name}", "onnx", verification, weights_bytes(d), rope_bytes(d), entry["size_bytes"],
                         graph_storage(d), _BY_NAME[name].note, entry["extra"].get("builder_options", {})))
        write_json_atomic(partial_json, {"rows": rows})
    base = next((r for r in rows if r["artifact"] == "gguf q4_k_m"), None)
    for r in rows:
        r["kl_ratio_vs_q4_k_m"] = r["mean_kl"] / base["mean_kl"] if base and base["mean_kl"] else None
        r["size_ratio_vs_q4_k_m"] = r["weights_bytes"] / base["weights_bytes"] if base else None
        # the matrices alone: the RoPE caches are no part of what the quant type decides
        r["size_ratio_vs_q4_k_m_without_rope"] = ((r["weights_bytes"] - r["rope_cache_bytes"]) / base["weights_bytes"]
                                                  if base else None)

    first = next((r["eval_set"] for r in rows if r.get("eval_set")), None)
    print(f"\n{model}: {n_params / 1e6:.1f}M parameters; evaluation set {first}")
    print(format_table(
        ["artifact", "weights", "RoPE cache", "bpw", "LM head", "embedding", "mean KL", "p99 KL", "top-1", "ppl Δ",
         "KL / q4_k_m", "size / q4_k_m", "w/o RoPE"],
        [[r["artifact"], human_bytes(r["weights_bytes"]), human_bytes(r["rope_cache_bytes"]),
          f"{r['weights_bytes'] * 8 / n_params:.2f}", r["lm_head"], r["embedding"], _g(r["mean_kl"]),
          _g(r["p99_kl"]), f"{r['top1'] * 100:.1f}%", f"{r['ppl_delta_pct']:+.2f}%", _x(r["kl_ratio_vs_q4_k_m"]),
          _x(r["size_ratio_vs_q4_k_m"]), _x(r["size_ratio_vs_q4_k_m_without_rope"])]
         for r in rows]))
    wall = time.perf_counter() - t0
    print(f"\n{len(rows)} artifacts in {wall:.0f} s")
    save_results({"model": str(model), "n_params": n_params, "eval_tokens": args.eval_tokens, "rows": rows,
                  "seconds": round(wall, 1), "steps": timer.as_dict()}, args.json or out / "results.json")
    return 0


def _build(convert: Callable[[], Any], out: Path, reuse: bool) -> tuple[Path, dict[str, Any]]:
    """Build one variant (unverified), or reuse the one a previous run left under ``out``."""
    import json

    manifest = out / "edgekit.json"
    if reuse and manifest.is_file():
        entry = next((a for a in json.loads(manifest.read_text())["artifacts"] if a["format"] == "onnx"), None)
        if entry is not None and (out / entry["file"] / "model.onnx").is_file():
            return out / entry["file"], entry
    from dataclasses import asdict

    a = convert().artifacts[0]
    return out / a.file, asdict(a)


def _measured(convert: Callable[..., Any], inputs: Any, out: Path, fmt: str, threads: int) -> Any:
    """Convert and verify; an artifact the correctness check refuses is rebuilt unverified and
    its quality measured all the same (recorded with ``correct: false`` and the reason), so one
    broken converter does not hide the comparison."""
    from edgekit.errors import VerificationError

    try:
        return convert(verify_artifacts=True).artifacts[0]
    except VerificationError as e:
        print(f"correctness check failed, measuring quality only: {e.one_line()}")
        a = convert(verify_artifacts=False).artifacts[0]
        a.verification = {**_quality_only(inputs, out / a.file, fmt, threads),
                          "correctness": {"passed": False, "error": e.one_line()}}
        return a


def _verify_existing(inputs: Any, path: Path, timer: Any, threads: int) -> dict[str, Any]:
    """Correctness then quality of a built ONNX directory, sharing the run's reference pass."""
    from edgekit.converters.onnx.convert import verify_onnx
    from edgekit.converters.onnx.quants import parse_onnx_quants
    from edgekit.converters.pipeline import Conversion, Verifier
    from edgekit.errors import VerificationError
    from edgekit.manifest import Manifest

    verifier = Verifier(inputs, Conversion(path.parent, Manifest(source=inputs.source_info), timer=timer), None,
                        threads)
    try:
        return verify_onnx(path, path.name, parse_onnx_quants("int4")[0], verifier, threads=threads)
    except VerificationError as e:
        print(f"correctness check failed, measuring quality only: {e.one_line()}")
        return {**_quality_only(inputs, path, "onnx", threads), "correctness": {"passed": False, "error": e.one_line()}}


def _quality_only(inputs: Any, path: Path, fmt: str, threads: int) -> dict[str, Any]:
    import numpy as np

    from edgekit.converters.quality import score_artifact

    ref = inputs.reference  # set by the failed verification: its scores come from the source weights
    if fmt == "gguf":
        from edgekit.runtimes.llamacpp import LlamaCppSession
        from edgekit.runtimes.llamacpp_score import score_positions

        n_ctx = max(64, len(ref.windows.windows[0]))
        with LlamaCppSession(path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads) as s:
            m = score_artifact(ref.scores, ref.windows, lambda ids, start: score_positions(s, ids, start))
    else:
        from edgekit.runtimes.onnx import OnnxSession

        with OnnxSession(path, n_ctx=0, n_threads=threads, device="cpu") as o:
            def score(ids: list[int], start: int) -> Iterator[np.ndarray]:
                yield o.logits(ids)[start:]

            m = score_artifact(ref.scores, ref.windows, score)
    return {**m.to_dict(), "eval_set": ref.windows.describe()}


def _row(label: str, fmt: str, v: dict[str, Any] | None, weights: int, rope: int, size: int,
         storage: dict[str, str], note: str, options: dict[str, str] | None = None) -> dict[str, Any]:
    v = v or {}
    return {"artifact": label, "format": fmt, "note": note, "builder_options": options or {},
            "weights_bytes": weights, "rope_cache_bytes": rope, "size_bytes": size,
            "lm_head": storage.get("lm_head", "-"), "embedding": storage.get("embedding", "-"),
            "mean_kl": v.get("mean_kl"), "p99_kl": v.get("p99_kl"), "top1": v.get("top1"),
            "ppl_delta_pct": v.get("ppl_delta_pct"), "eval_set": v.get("eval_set"),
            "correct": bool(v.get("correctness", {}).get("passed")),
            "correctness_error": v.get("correctness", {}).get("error")}


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
