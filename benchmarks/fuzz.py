"""Fuzz every parser edgekit or its native libraries run, edgekit beside the raw library, in one run.

    python benchmarks/fuzz.py --cases 2000 --other-cases 500 --seed 1
    nice -n 10 python benchmarks/fuzz.py --cases 2000 --other-cases 500 --seed 1 --formats gguf,safetensors

Mutants of valid files (edgekit.validate_fuzz: bit flips and 64-bit boundary overwrites in the
header, metadata and tensor table; truncation at region boundaries; appended junk; swapped
tensor offsets; for JSON files value-level changes and deep nesting) of each format:

==============  ===================================  ==========================================
format          valid file mutated                   edgekit side / raw side
==============  ===================================  ==========================================
gguf            the demo model as q8_0, one layer    edgekit.load + generate / llama_cpp.Llama
safetensors     the demo model's model.safetensors   open_source + read every tensor / safe_open
tokenizer       the demo model's tokenizer.json      check_tokenizer_files + tokenizers / tokenizers
genai_config    its ONNX fp32 export's config        edgekit.load + generate / og.Model
onnx            that export's model.onnx             edgekit.load + generate / og.Model
==============  ===================================  ==========================================

Each mutant runs in a child process on both sides (a crash is counted, not fatal; a case past
``--timeout`` is a hang and its child is killed), under an address-space limit so a huge
allocation fails instead of swapping the host. Outcomes: accepted (loaded and generated),
refused (edgekit's one-line error; for the raw side, any Python exception the library raised),
crash (a signal), hang, traceback (edgekit only: an exception that is not edgekit's). The worst
peak RSS of one case is reported per format and side. Goal: 0 crashes, hangs and tracebacks on
the edgekit side. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BAD = ("crash", "hang", "traceback")


def _base_files(work: Path, formats: list[str]) -> dict[str, Path]:
    """The valid files mutated, built once from the packaged demo model (cached in ``work``)."""
    from edgekit.demo import demo_model_dir
    from edgekit.validate_fuzz import rebuild_gguf

    demo = demo_model_dir()
    bases: dict[str, Path] = {"safetensors": demo / "model.safetensors", "tokenizer": demo / "tokenizer.json"}
    if "gguf" in formats:
        tiny = work / "base" / "tiny-q8_0.gguf"
        if not tiny.is_file():
            from edgekit.converters.gguf.convert import convert_gguf

            out = work / "base" / "gguf"
            (entry,) = convert_gguf(demo, out, "q8_0", verify_artifacts=False).artifacts
            rebuild_gguf(out / entry.file, tiny, keep_layers=1)
        bases["gguf"] = tiny
    if {"genai_config", "onnx"} & set(formats):
        onnx_dir = work / "base" / "onnx" / "model-onnx-fp32"
        if not (onnx_dir / "genai_config.json").is_file():
            from edgekit.converters.onnx.convert import convert_onnx

            convert_onnx(demo, work / "base" / "onnx", "fp32", verify_artifacts=False)
        bases["genai_config"] = onnx_dir / "genai_config.json"
        bases["onnx"] = onnx_dir / "model.onnx"
    return bases


def _mutant(fmt: str, data: bytes, rng: random.Random, regions: Any) -> tuple[str, bytes]:
    from edgekit import validate_fuzz as vf

    if fmt == "gguf":
        return vf.mutate_binary(data, regions, rng, swap_points=vf.gguf_tensor_offsets(data, regions),
                                value_slots=vf.gguf_value_slots(data))
    if fmt == "safetensors":
        return vf.safetensors_mutant(data, rng)
    if fmt == "onnx":
        return vf.mutate_binary(data, regions, rng)
    return vf.mutate_json_file(data, rng)


def _regions(fmt: str, data: bytes) -> Any:
    from edgekit import validate_fuzz as vf
    from edgekit.runtimes.onnx_proto import fields

    if fmt == "gguf":
        return vf.gguf_regions(data)
    if fmt == "onnx":  # the top-level fields of the ModelProto (the graph is one of them)
        return [vf.Region(f"field {n}", a - 2, b) for n, _, a, b in fields(memoryview(data), 0, len(data))] \
            + [vf.Region("data", len(data), len(data))]
    return None


def _case_dir(fmt: str, base: Path, case: Path) -> Path:
    """A directory holding the base file's siblings (symlinked) and the mutant under the base's name."""
    case.mkdir(parents=True, exist_ok=True)
    for sib in base.parent.iterdir():
        if sib.is_file() and sib.name != base.name and not sib.name.startswith("edgekit"):
            (case / sib.name).symlink_to(sib)
    return case / base.name


def run(formats: list[str], counts: dict[str, int], seed: int, work: Path, timeout: float,
        address_limit: int, keep: int) -> dict[str, Any]:
    from edgekit.validate_fuzz import SIDES, Worker

    bases = _base_files(work, formats)
    command = [sys.executable, __file__, "--worker", "--address-limit", str(address_limit)]
    workers = {side: Worker(command, timeout) for side in SIDES}
    table: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    kept = work / "kept"
    try:
        for fmt in formats:
            base = bases[fmt]
            data = base.read_bytes()
            regions = _regions(fmt, data)
            rng = random.Random(seed * 1000 + int(hashlib.sha256(fmt.encode()).hexdigest()[:6], 16))
            stats = {side: Counter() for side in SIDES}
            peak = dict.fromkeys(SIDES, 0)
            through = 0  # mutants that crash or hang the raw library, and that edgekit lets through
            both_bad = 0
            examples[fmt] = []
            for side in SIDES:  # warm-up on the valid file (imports), not counted
                warm = workers[side].run(side, fmt, base if fmt not in ("genai_config", "onnx") else base.parent)
                if warm["outcome"] != "accepted":
                    raise SystemExit(f"the valid {fmt} file is not accepted by the {side} side: {warm}")
            t0 = time.perf_counter()
            for i in range(counts[fmt]):
                what, blob = _mutant(fmt, data, rng, regions)
                case = work / "cases" / f"{fmt}-{i}"
                shutil.rmtree(case, ignore_errors=True)
                target = _case_dir(fmt, base, case)
                target.write_bytes(blob)
                arg = case if fmt in ("genai_config", "onnx") else target
                res = {side: workers[side].run(side, fmt, arg) for side in SIDES}
                for side in SIDES:
                    stats[side][res[side]["outcome"]] += 1
                    peak[side] = max(peak[side], int(res[side].get("peak_rss_kib") or 0))
                raw_bad = res["raw"]["outcome"] in BAD
                ek_bad = res["edgekit"]["outcome"] in BAD
                through += raw_bad and res["edgekit"]["outcome"] == "accepted"
                both_bad += raw_bad and ek_bad
                if (raw_bad or ek_bad) and len(examples[fmt]) < keep:
                    examples[fmt].append({"case": i, "mutation": what, "edgekit": res["edgekit"], "raw": res["raw"]})
                    dest = kept / f"{fmt}-{i}{target.suffix}"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(target, dest)
                shutil.rmtree(case, ignore_errors=True)
            table[fmt] = {side: {"tried": counts[fmt], **{k: stats[side][k] for k in
                                                         ("accepted", "refused", "error", *BAD)},
                                 "worst_peak_rss_mib": round(peak[side] / 1024, 1)} for side in SIDES}
            table[fmt]["raw_crash_or_hang_through_edgekit"] = through
            table[fmt]["seconds"] = round(time.perf_counter() - t0, 1)
            _print_row(fmt, table[fmt])
    finally:
        for w in workers.values():
            w.close()
    return {"seed": seed, "timeout_s": timeout, "address_limit_bytes": address_limit, "formats": table,
            "examples": examples}


HEAD = (f"{'format':<13} {'side':<8} {'tried':>6} {'accepted':>9} {'refused':>8} {'crash':>6} {'hang':>5} "
        f"{'traceback':>10} {'peak RSS':>9}")


def _print_row(fmt: str, row: dict[str, Any]) -> None:
    for side in ("edgekit", "raw"):
        s = row[side]
        refused = s["refused"] + s["error"]
        tb = s["traceback"] if side == "edgekit" else "-"
        print(f"{fmt:<13} {side:<8} {s['tried']:>6} {s['accepted']:>9} {refused:>8} {s['crash']:>6} {s['hang']:>5} "
              f"{tb:>10} {s['worst_peak_rss_mib']:>6.0f} MiB", flush=True)
    print(f"{'':<13} raw crashes/hangs that got through edgekit: {row['raw_crash_or_hang_through_edgekit']} "
          f"({row['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000, help="GGUF mutants")
    ap.add_argument("--other-cases", type=int, default=500, help="mutants of each other format")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default=",".join(("gguf", "safetensors", "tokenizer", "genai_config", "onnx")))
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--address-limit", type=int, default=8 << 30, help="RLIMIT_AS of each child (bytes; 0: none)")
    ap.add_argument("--keep", type=int, default=20, help="bad mutants kept (per format) under WORK/kept")
    ap.add_argument("--work", type=Path, default=Path("bench-out/fuzz"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from edgekit.validate_fuzz import worker_main

        worker_main(args.address_limit)
        return 0
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    counts = {f: args.cases if f == "gguf" else args.other_cases for f in formats}
    print(HEAD, flush=True)
    results = run(formats, counts, args.seed, args.work, args.timeout, args.address_limit, args.keep)
    from _results import save_results

    save_results(results, args.json or Path(__file__).parent / "results" / f"fuzz-seed{args.seed}.json")
    bad = sum(results["formats"][f]["edgekit"][k] for f in formats for k in BAD)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
