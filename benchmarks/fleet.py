"""Benchmark: the same benchmark matrix run locally one job after another vs through a local Ray cluster.

    python benchmarks/fleet.py                      # demo model f16 + q8_0, threads 1,2
    python benchmarks/fleet.py A.gguf B.gguf --threads 1 --reps 2

In one run, on this machine:
  - local: every (artifact, thread count) job through `edgekit bench`'s run_bench, one after
    another (each job a fresh bench worker process, as always);
  - ray, one board: the same jobs through `fleet_bench` on a cluster of one "board" (a head node
    with --num-cpus 1), so jobs run one after another there too: (ray - local) / jobs is what the
    fleet adds per job (scheduling, the artifact through the object store, the board's host
    detection and its 0.5 s idle-cost sample, writing the job's file);
  - ray, two boards: the matrix over two profiles (twice the jobs) on two nodes at once, against
    the same jobs one after another locally. On a 2-core host both boards share the cores, so
    this shows what running in parallel costs here, not what two real boards gain.
  - a worker node's idle RSS (its whole process tree: raylet, agents, idle workers, the `ray start`
    process) and what each job recorded as the Ray processes' idle RSS and CPU.
Order: local, then the cluster; the host's load average is recorded (other work skews both).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

HERE = Path(__file__).resolve().parent


def demo_artifacts(out: Path) -> list[Path]:
    import edgekit
    from edgekit.demo import demo_model_dir

    edgekit.convert(demo_model_dir(), out, to="gguf", quants="f16,q8_0", name="demo", verify=False)
    return [out / "demo-f16.gguf", out / "demo-q8_0.gguf"]


def tree_rss(node: Any) -> tuple[int, int]:
    """(summed RSS, processes) of one local node's process tree."""
    import psutil

    rss, n = 0, 0
    for p in node.tree():
        try:
            rss += p.memory_info().rss
            n += 1
        except psutil.Error:
            continue
    return rss, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="Alternating local / one-board rounds (median).")
    ap.add_argument("-o", "--output", type=Path, default=HERE / "results" / "fleet-demo.json")
    args = ap.parse_args()

    from edgekit.bench import BenchSettings, run_bench
    from edgekit.fleet.bench import fleet_bench
    from edgekit.fleet.local import LocalCluster
    from edgekit.ui import format_table

    work = Path(tempfile.mkdtemp(prefix="ekf-bench-"))
    os.environ["EDGEKIT_HOME"] = str(work / "home")  # the boards' artifact caches: fresh, so copies are timed
    arts = args.artifacts or demo_artifacts(work / "art")
    threads = tuple(int(t) for t in args.threads.split(","))
    settings = BenchSettings(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, repetitions=args.reps,
                             warmup=0, threads=threads)
    n_jobs = len(arts) * len(threads)
    load0 = os.getloadavg()[0]

    # alternating rounds (local, then the same jobs through the one-board cluster): load from
    # other work on the host hits both; medians are reported
    local_s: list[float] = []
    one_s: list[float] = []
    out: dict[str, Any] = {}
    with LocalCluster([("head", "pa"), ("b1", "pb")]) as cluster:
        os.environ.update(cluster.env)  # this process is the cluster's driver
        idle_nodes = {n.name: tree_rss(n) for n in cluster.nodes}
        for i in range(args.rounds):
            t0 = time.perf_counter()
            local = run_bench(list(arts), settings)
            local_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one = fleet_bench(list(arts), settings, on="pa", output=work / f"one-{i}.json", address=cluster.address,
                              transfer="object-store")
            one_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        two = fleet_bench(list(arts), settings, on="pa,pb", output=work / "two.json", address=cluster.address,
                          transfer="object-store")
        ray_two_s = time.perf_counter() - t0
        import ray

        ray.shutdown()
        out["idle_node_rss_bytes"] = {k: v[0] for k, v in idle_nodes.items()}
        out["idle_node_processes"] = {k: v[1] for k, v in idle_nodes.items()}
    local_med, ray_one_s = statistics.median(local_s), statistics.median(one_s)
    local2_s = 2 * local_med
    in_job = [r.conditions["fleet"] for r in one.results.results]
    board_s = sum(f["setup_s"] + f["bench_s"] for f in in_job)

    conds = [r.conditions.get("ray_worker", {}) for r in two.results.results]
    idle = [c["idle"] for c in conds if c.get("idle")]
    during = [c["during_run"] for c in conds if c.get("during_run")]
    local_tg = statistics.fmean(r.metrics[settings.tg_name]["mean"] for r in local.results)
    one_tg = statistics.fmean(r.metrics[settings.tg_name]["mean"] for r in one.results.results)
    rows = [
        ["local, one after another", n_jobs, local_med, local_med / n_jobs, 1.0, local_tg],
        ["ray, one board", n_jobs, ray_one_s, ray_one_s / n_jobs, ray_one_s / local_med, one_tg],
        ["local, one after another (2x the jobs)", 2 * n_jobs, local2_s, local2_s / (2 * n_jobs), 1.0, None],
        ["ray, two boards (2 profiles)", 2 * n_jobs, ray_two_s, ray_two_s / (2 * n_jobs), ray_two_s / local2_s, None],
    ]
    print(format_table(["run", "jobs", "end-to-end s", "s per job", "vs local", f"mean {settings.tg_name} t/s"],
                       [[r[0], r[1], round(r[2], 2), round(r[3], 2), f"{r[4]:.2f}x",
                         round(r[5], 1) if r[5] else None] for r in rows]))
    overhead = (ray_one_s - local_med) / n_jobs
    outside = (ray_one_s - board_s) / n_jobs
    print(f"fleet overhead per job (one board, sequential both ways, medians of {args.rounds} rounds): "
          f"{overhead:+.2f} s; outside the job on the board (scheduling, object store, results): {outside:.2f} s; "
          f"inside it before the benchmark (artifact copy + 0.5 s idle sample): "
          f"{statistics.fmean(f['setup_s'] for f in in_job):.2f} s")
    mib = 2**20
    for name, rss in out["idle_node_rss_bytes"].items():
        print(f"idle node {name}: {rss / mib:.0f} MiB RSS in {out['idle_node_processes'][name]} processes")
    if idle:
        print(f"Ray processes on a board before each job: {statistics.fmean(i['rss_bytes'] for i in idle) / mib:.0f} MiB "
              f"RSS, {statistics.fmean(i['cpu_percent'] for i in idle):.1f}% CPU (idle); during the job "
              f"{statistics.fmean(d['cpu_percent'] for d in during):.1f}% CPU")
    results = {
        "benchmark": "fleet", "host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                       "load_average_1m_start": round(load0, 2),
                                       "load_average_1m_end": round(os.getloadavg()[0], 2),
                                       "python": sys.version.split()[0]},
        "settings": {"artifacts": [a.name for a in arts], "threads": list(threads), "prompt_tokens": args.prompt_tokens,
                     "gen_tokens": args.gen_tokens, "repetitions": args.reps, "ray_nodes": "--num-cpus 1, 100 MiB store"},
        "runs": [{"run": r[0], "jobs": r[1], "end_to_end_s": round(r[2], 3), "s_per_job": round(r[3], 3),
                  "ratio_vs_local": round(r[4], 3)} for r in rows],
        "rounds": {"local_s": [round(x, 3) for x in local_s], "ray_one_board_s": [round(x, 3) for x in one_s]},
        "overhead_per_job_s": round(overhead, 3), "outside_job_per_job_s": round(outside, 3),
        "in_job_setup_s": [f["setup_s"] for f in in_job], "in_job_bench_s": [f["bench_s"] for f in in_job],
        "idle_node_rss_bytes": out["idle_node_rss_bytes"], "idle_node_processes": out["idle_node_processes"],
        "ray_processes_idle_before_job": idle, "ray_processes_during_job": during,
    }
    save_results(results, args.output)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
