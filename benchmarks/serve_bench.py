"""Benchmark: `edgekit serve` on loopback under N concurrent streaming clients, and its overhead vs in-process.

    python benchmarks/serve_bench.py                          # the demo model (q8_0), clients 1,2,4,12
    python benchmarks/serve_bench.py ARTIFACT --clients 1,2,4 --duration 10 --max-concurrent 2

For each client count, N threads each send streaming /v1/completions requests back to back
for --duration seconds (keep-alive connection per client, raw httpx so the client costs
little CPU) and the table reports requests/s, p50/p99 latency and time to first token, the
server's aggregate tokens/s, and errors (non-200 answers or error events; 429 shows up once
clients exceed --max-concurrent + --max-queue).

Overhead: the server with one client and an in-process session (`edgekit.load`, same
threads, prompts, max_tokens) run in alternating rounds in this one run, so machine noise
hits both; the ratio is server tokens/s over in-process tokens/s. Client and server share
this machine's cores: on a small machine the client's own work is part of the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

PROMPTS = [
    "The following function returns the number of items in a list, and it raises an error when",
    "Return a new dictionary with the keys of the mapping and the values",
    "This method reads the file and returns",
    "The string is split on whitespace and",
]


def start_server(artifact: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "edgekit", "serve", str(artifact), "--port", "0", "--json", "--ctx", str(args.ctx),
           "--threads", str(args.threads), "--max-concurrent", str(args.max_concurrent), "--max-queue",
           str(args.max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, json.loads(line)["url"]


def one_request(client: Any, url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streaming completion: latency, TTFT, tokens (from the usage event), error or not."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, error = 0.0, 0, None
    with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return {"error": str(r.status_code), "latency_s": time.perf_counter() - t0}
        last = ""
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if not ttft:  # completions streams start with the first token
                ttft = time.perf_counter() - t0
            if '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            elif '"error"' in line:
                error = json.loads(line[6:])["error"]["code"]
            last = line
        if last != "data: [DONE]" and error is None:
            error = "truncated"
    return {"error": error, "latency_s": time.perf_counter() - t0, "ttft_s": ttft, "tokens": tokens}


def run_clients(url: str, n: int, duration: float, max_tokens: int) -> dict[str, Any]:
    import httpx

    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def client_loop(i: int) -> None:
        with httpx.Client(timeout=120) as client:
            k = i
            while time.perf_counter() < stop_at:
                r = one_request(client, url, PROMPTS[k % len(PROMPTS)], max_tokens)
                k += 1
                with lock:
                    results.append(r)
                if r["error"] in ("429", "503"):
                    time.sleep(0.05)  # what a well-behaved client does on Retry-After

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    errors: dict[str, int] = {}
    for r in results:
        if r["error"] is not None:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    lat = sorted(r["latency_s"] for r in ok)
    ttft = sorted(r["ttft_s"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": n, "wall_s": wall, "requests": len(results), "ok": len(ok), "errors": errors,
            "requests_per_s": len(ok) / wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": _pct(lat, 50), "latency_p99_s": _pct(lat, 99),
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99)}


def _pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[k]


def in_process(session: Any, duration: float, max_tokens: int) -> dict[str, Any]:
    """The same requests through the in-process session, back to back for ``duration`` seconds."""
    t0 = time.perf_counter()
    tokens, n, ttfts = 0, 0, []
    while time.perf_counter() - t0 < duration:
        r = session.generate(PROMPTS[n % len(PROMPTS)], max_tokens=max_tokens, temperature=0.0)
        tokens += r.stats.completion_tokens
        ttfts.append(r.stats.time_to_first_token_s)
        n += 1
    wall = time.perf_counter() - t0
    return {"requests": n, "tokens_per_s": tokens / wall, "requests_per_s": n / wall,
            "ttft_p50_s": statistics.median(ttfts)}


def ensure_artifact(args: argparse.Namespace) -> Path:
    if args.artifact is not None:
        return Path(args.artifact)
    import edgekit
    from edgekit.demo import demo_model_dir

    out = args.out / "demo"
    path = out / "demo-q8_0.gguf"
    if not path.is_file():
        edgekit.convert(demo_model_dir(), out, to="gguf", quants="q8_0", verify_artifacts=False, name="demo")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", nargs="?", default=None, help="GGUF file / ONNX dir (default: the demo model, q8_0)")
    ap.add_argument("--clients", default="1,2,4,12", help="client counts to run, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    ap.add_argument("--rounds", type=int, default=4, help="alternating overhead rounds (server vs in-process)")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="threads per slot (default: cores / max-concurrent)")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench-out/serve"))
    ap.add_argument("--json", type=Path, default=None, help="where to write results (default OUT/results.json)")
    args = ap.parse_args(argv)
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.max_concurrent)

    import httpx

    import edgekit
    from edgekit import __version__
    from edgekit.ui import format_table

    artifact = ensure_artifact(args)
    levels = [int(x) for x in args.clients.split(",")]
    results: dict[str, Any] = {"edgekit_version": __version__, "python": platform.python_version(),
                               "machine": platform.machine(), "cpus": os.cpu_count(), "artifact": str(artifact),
                               "threads_per_slot": args.threads, "max_concurrent": args.max_concurrent,
                               "max_queue": args.max_queue, "max_tokens": args.max_tokens,
                               "duration_s": args.duration}
    proc, url = start_server(artifact, args)
    try:
        with httpx.Client() as c:  # warm-up: page cache, first-request imports
            one_request(c, url, PROMPTS[0], 8)
        # overhead: alternate server (1 client) and in-process rounds
        round_s = max(1.0, args.duration / 2)
        server_rounds, inproc_rounds = [], []
        with edgekit.load(artifact, n_ctx=args.ctx, n_threads=args.threads) as session:
            in_process(session, 0.5, 8)
            for _ in range(args.rounds):
                server_rounds.append(run_clients(url, 1, round_s, args.max_tokens))
                inproc_rounds.append(in_process(session, round_s, args.max_tokens))
        srv_tps = statistics.median(r["tokens_per_s"] for r in server_rounds)
        ip_tps = statistics.median(r["tokens_per_s"] for r in inproc_rounds)
        results["overhead"] = {"server_rounds": server_rounds, "in_process_rounds": inproc_rounds,
                               "server_tokens_per_s": srv_tps, "in_process_tokens_per_s": ip_tps,
                               "ratio_server_over_in_process": srv_tps / ip_tps}
        results["levels"] = [run_clients(url, n, args.duration, args.max_tokens) for n in levels]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    print(f"\n== {artifact.name}: {args.max_concurrent} slot(s) x {args.threads} thread(s), queue {args.max_queue}, "
          f"max_tokens {args.max_tokens}, {args.duration:g} s per row, {os.cpu_count()} CPUs")

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000

    rows = [[lv["clients"], lv["requests"], lv["requests_per_s"], ms(lv["latency_p50_s"]), ms(lv["latency_p99_s"]),
             ms(lv["ttft_p50_s"]), ms(lv["ttft_p99_s"]), lv["tokens_per_s"],
             ", ".join(f"{k}: {v}" for k, v in sorted(lv["errors"].items())) or "0"]
            for lv in results["levels"]]
    print(format_table(["clients", "requests", "req/s", "p50 ms", "p99 ms", "TTFT p50 ms", "TTFT p99 ms", "tok/s",
                        "errors"], rows))
    ov = results["overhead"]
    print(f"\noverhead ({args.rounds} alternating rounds of {round_s:g} s, medians):")
    print(format_table(["path", "tok/s", "req/s", "TTFT p50 ms"], [
        ["server, 1 client (HTTP + SSE)", ov["server_tokens_per_s"],
         statistics.median(r["requests_per_s"] for r in server_rounds),
         ms(statistics.median(r["ttft_p50_s"] for r in server_rounds))],
        ["in-process session", ov["in_process_tokens_per_s"],
         statistics.median(r["requests_per_s"] for r in inproc_rounds),
         ms(statistics.median(r["ttft_p50_s"] for r in inproc_rounds))],
    ]))
    print(f"ratio server / in-process tokens/s: {ov['ratio_server_over_in_process']:.3f}")
    save_results(results, args.json or args.out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
