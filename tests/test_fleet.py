"""`edgekit fleet` on a real Ray cluster started here: a head and two worker nodes on loopback,
each one "board" (``--num-cpus 1``, a 100 MiB object store, a temporary directory of its own),
two of profile ``pa`` and one of profile ``pb``. The demo model's f16 and q8_0 artifacts are
benchmarked over both profiles through the CLI, as a user runs it; then boards are killed
mid-job. The cluster is torn down (its own process trees, nothing else) even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgekit.bench.results import load_results
from edgekit.fleet.local import LocalCluster
from edgekit.fsutil import sha256_file

BOARDS = [("head", "pa"), ("a2", "pa"), ("b1", "pb")]
SMALL = ["-p", "32", "-n", "8", "-r", "1", "--warmup", "0", "-t", "1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    home = tmp_path_factory.mktemp("fleet-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEKIT_HOME", str(home))  # the boards' artifact caches (inherited by every node)
        c = LocalCluster(BOARDS)
        for k, v in c.env.items():  # the cluster's own auth token, for the CLI drivers the tests start
            mp.setenv(k, v)
        try:
            yield c.start()
        finally:
            c.stop()
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(c.root) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"processes of the test cluster survived its teardown: {leftovers}"


@pytest.fixture(scope="module")
def artifacts(demo_out: Path) -> list[Path]:
    return [demo_out / "demo-f16.gguf", demo_out / "demo-q8_0.gguf"]


def fleet(cluster: LocalCluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekit", "fleet", *args, "--address", cluster.address],
                          capture_output=True, text=True, timeout=timeout)


def bench_args(artifacts: list[Path], out: Path, *extra: str) -> list[str]:
    return ["bench", *map(str, artifacts), "--on", "pa,pb", *SMALL, "-o", str(out), "--json", *extra]


def test_status_lists_the_boards(cluster: LocalCluster) -> None:
    res = fleet(cluster, "status", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    by_name = {r["board"]["name"]: r for r in rows}
    assert set(by_name) == {"head", "a2", "b1"}
    assert [by_name[n]["profiles"] for n in ("head", "a2", "b1")] == [["pa"], ["pa"], ["pb"]]
    for r in rows:
        assert r["alive"] and r["busy"] is False
        assert 0 < r["memory_available_bytes"] <= r["memory_total_bytes"]
        assert r["board"]["cores"] >= 1 and r["board"]["cpu_model"]
    assert len({r["node_id"] for r in rows}) == 3


def test_matrix_gives_one_result_per_artifact_and_profile(cluster: LocalCluster, artifacts: list[Path],
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("fleet-matrix") / "results.json"
    res = fleet(cluster, *bench_args(artifacts, out, "--transfer", "object-store"))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["fleet"]["ran"] == 4 and doc["fleet"]["skipped"] == 0 and doc["fleet"]["failed"] == 0
    merged = load_results(out)  # the existing schema: bench's own reader takes it
    assert merged.status == "complete"
    seen = {(r.artifact, r.conditions["profile"]) for r in merged.results}
    assert seen == {(a.name, p) for a in artifacts for p in ("pa", "pb")}
    boards = {"pa": {"head", "a2"}, "pb": {"b1"}}
    nodes: dict[str, str] = {}
    for r in merged.results:
        f = r.conditions["fleet"]
        assert r.status == "complete" and r.metrics["pp32"]["n"] == 1 and r.metrics["tg8"]["mean"] > 0
        assert f["board"] in boards[f["profile"]]
        assert nodes.setdefault(f["board"], f["node_id"]) == f["node_id"]  # one node id per board
        assert r.sha256 == sha256_file(Path(f["source_path"]))
        assert f["artifact_transfer"].startswith("object store")
        assert Path(r.path) != Path(f["source_path"])  # the board ran its own copy
        idle = r.conditions["ray_worker"]["idle"]
        assert idle["rss_bytes"] > 10 * 2**20 and idle["processes"] >= 2 and idle["cpu_percent"] >= 0
        assert r.conditions["ray_worker"]["during_run"]["window_s"] > 0
    assert len(set(nodes.values())) == len(nodes)
    jobs = sorted(out.with_name("results-jobs").glob("*.json"))
    assert len(jobs) == 4
    from_jobs = {(load_results(j).results[0].artifact, load_results(j).results[0].conditions["profile"]) for j in jobs}
    assert from_jobs == seen
    for j in jobs:  # each job file is a results file of its own, with its board as the host
        run = load_results(j)
        assert run.host["fleet_board"]["name"] == run.results[0].conditions["fleet"]["board"]

    # the same command again: nothing runs, nothing is rewritten
    stamps = {j: j.stat().st_mtime_ns for j in jobs}
    again = fleet(cluster, *bench_args(artifacts, out))
    assert again.returncode == 0, again.stderr
    doc2 = json.loads(again.stdout)
    assert doc2["fleet"]["ran"] == 0 and doc2["fleet"]["skipped"] == 4
    assert {j: j.stat().st_mtime_ns for j in jobs} == stamps
    assert [r["metrics"] for r in doc2["results"]] == [r.metrics for r in merged.results]

    # the merged file feeds `edgekit bench report`: one series per profile
    report_dir = out.parent / "report"
    rep = subprocess.run([sys.executable, "-m", "edgekit", "bench", "report", str(out), "-o", str(report_dir)],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    md = (report_dir / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| artifact | quant |"))
    assert "pa " in header and "pb " in header
    for a in artifacts:
        row = next(line for line in md.splitlines() if line.startswith(f"| {a.name} |"))
        assert row.count(" ± ") == 4  # pp and tg on both profiles, none missing
    assert (report_dir / "tokens_per_s.png").stat().st_size > 0


def test_ctrl_c_keeps_what_finished(cluster: LocalCluster, artifacts: list[Path], tmp_path: Path) -> None:
    """pb has one board, so its two jobs run one after the other: Ctrl-C during the second."""
    out, jobs_dir = tmp_path / "results.json", tmp_path / "results-jobs"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", "bench", *map(str, artifacts), "--on", "pb",
                             "-p", "32", "-n", "16", "-r", "30", "--warmup", "0", "-t", "1", "-o", str(out),
                             "--address", cluster.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not (_complete_jobs(jobs_dir) and _bench_worker_under(cluster, "b1")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        finished = _complete_jobs(jobs_dir)
        assert len(finished) == 1
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: finished jobs are in" in stderr
    merged = load_results(out)
    assert merged.status == "interrupted"
    assert [r.status for r in merged.results] == ["complete"]
    assert _complete_jobs(jobs_dir) == finished
    deadline = time.monotonic() + 30  # the cancelled job's bench worker goes with its Ray worker
    while _bench_worker_under(cluster, "b1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _bench_worker_under(cluster, "b1")


def test_bad_input_is_one_line(cluster: LocalCluster, artifacts: list[Path], tmp_path: Path) -> None:
    res = fleet(cluster, "bench", str(artifacts[0]), "--on", "nope", "-o", str(tmp_path / "r.json"))
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no board in the cluster has profile nope --") and "pa" in line
    res = fleet(cluster, "bench", str(tmp_path / "missing.gguf"), "--on", "pa", "-o", str(tmp_path / "r.json"))
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "r.json").exists()


def test_convert_fans_out_with_verification(cluster: LocalCluster, tmp_path: Path) -> None:
    """The demo model converted (and verified) on a node, shipped there and back through the
    object store; the output lands in OUT/<model dir name>/ with its manifest."""
    from edgekit.demo import demo_model_dir
    from edgekit.manifest import load_manifest

    out = tmp_path / "out"
    res = fleet(cluster, "convert", str(demo_model_dir()), "-q", "q8_0", "--eval-tokens", "256", "-o", str(out),
                "--transfer", "object-store", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    (outcome,) = json.loads(res.stdout)
    assert outcome["status"] == "complete" and outcome["board"] in {"head", "a2", "b1"}
    target = out / demo_model_dir().name
    manifest = load_manifest(target)
    (art,) = manifest.artifacts
    assert art.quant == "q8_0" and art.verification and art.verification["passed"]
    assert sha256_file(target / art.file) == art.sha256
    assert not [p for p in out.iterdir() if p.name.startswith(".edgekit-tmp-")]


def test_join_is_a_thin_ray_start(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEKIT_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "join", "--head", "--profile", "orin-x",
                          "--name", "bench-1", "--dry-run", "--json"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    cmd = doc["command"]
    assert cmd[:2] == ["ray", "start"] and "--head" in cmd
    assert json.loads(cmd[cmd.index("--resources") + 1]) == {"edgekit-profile:orin-x": 1.0}
    assert cmd[cmd.index("--node-ip-address") + 1] == "127.0.0.1"  # loopback unless asked
    assert doc["board"]["name"] == "bench-1" and doc["board"]["profile_origin"] == "given"
    assert doc["board"]["cores"] >= 1 and doc["board"]["memory_gib"] > 0
    detected = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "join", "10.0.0.5:6379", "--dry-run",
                               "--json"], capture_output=True, text=True, env=env)
    doc = json.loads(detected.stdout)
    assert doc["board"]["profile_origin"] == "detected" and doc["board"]["profile"]
    assert "--node-ip-address" not in doc["command"]  # a remote head: Ray picks the interface
    both = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "join", "--head", "h:1"], capture_output=True,
                          text=True, env=env)
    assert both.returncode == 1 and both.stderr.startswith("error: give the head's address HEAD or --head")


def _bench_worker_under(cluster: LocalCluster, name: str) -> bool:
    for p in cluster.node(name).tree():
        try:
            if "edgekit.bench.worker" in " ".join(p.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def _complete_jobs(jobs_dir: Path) -> dict[str, str]:
    out = {}
    for j in jobs_dir.glob("*.json"):
        try:
            r = load_results(j).results[0]
        except Exception:  # written atomically, so only a file that is not ours
            continue
        if r.status == "complete":
            out[j.name] = r.conditions["fleet"]["job_key"]
    return out


KILL_RUN = ("-p", "256", "-n", "256", "-r", "4")


def test_killed_boards_retry_or_fail_and_lose_nothing(cluster: LocalCluster, artifacts: list[Path],
                                                      tmp_path: Path) -> None:
    """a2 (pa) is killed mid-job: its job is retried on head, the other pa board. Then b1 (the
    only pb board) is killed during its second job: that job is recorded failed with the
    reason; the pb result finished before stays. Runs last: it takes boards away."""
    out = tmp_path / "results.json"
    jobs_dir = tmp_path / "results-jobs"
    # jobs long enough (seconds, not tenths) that the poll below sees b1 inside its second job on
    # any host, loaded or not
    args = ["bench", *map(str, artifacts), "--on", "pa,pb", *KILL_RUN, "--warmup", "0",
            "-t", "1", "-o", str(out), "--json", "--address", cluster.address]
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed: list[str] = []
        before_b1: dict[str, str] = {}
        deadline = time.monotonic() + 180
        while proc.poll() is None and len(killed) < 2 and time.monotonic() < deadline:
            if "a2" not in killed and _bench_worker_under(cluster, "a2"):
                cluster.kill("a2")
                killed.append("a2")
            if "b1" not in killed and _bench_worker_under(cluster, "b1"):
                done = _complete_jobs(jobs_dir)
                pb_done = [k for k in done if _profile_of(jobs_dir / k) == "pb"]
                if pb_done:  # b1 is on its second job, its first one is on disk
                    before_b1 = done
                    cluster.kill("b1")
                    killed.append("b1")
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert killed == ["a2", "b1"] or sorted(killed) == ["a2", "b1"], (killed, stderr[-2000:])
    assert proc.returncode == 1, stderr[-2000:]  # a failed job: exit 1 after the table
    doc = json.loads(stdout)
    merged = load_results(out)
    by = {(r.artifact, r.conditions["profile"]): r for r in merged.results}
    assert len(by) == 4  # every job has a result, finished or failed with its reason
    for a in artifacts:  # profile pa had another board: both pa jobs finished
        r = by[(a.name, "pa")]
        assert r.status == "complete", r.error
    retried = [e for e in doc["fleet"]["events"] if e["event"] == "retry"]
    assert retried and all(e["profile"] == "pa" for e in retried)
    retried_keys = {e["job_key"] for e in retried}
    for r in merged.results:
        if r.conditions["fleet"]["job_key"] in retried_keys and r.status == "complete":
            assert r.conditions["fleet"]["board"] == "head" and r.conditions["fleet"]["attempt"] >= 1
    pb = [by[(a.name, "pb")] for a in artifacts]
    assert sorted(r.status for r in pb) == ["complete", "failed"]
    failed = next(r for r in pb if r.status == "failed")
    assert failed.error and ("died" in failed.error or "left the cluster" in failed.error)
    # nothing finished was lost: every job complete before b1 died is complete in the end
    after = _complete_jobs(jobs_dir)
    assert set(before_b1) <= set(after)
    complete_keys = {r.conditions["fleet"]["job_key"] for r in merged.results if r.status == "complete"}
    assert set(before_b1.values()) <= complete_keys

    # a rerun skips the finished jobs; pb has no board left, so its missing job fails at once
    again = fleet(cluster, "bench", *map(str, artifacts), "--on", "pa,pb", *KILL_RUN,
                  "--warmup", "0", "-t", "1", "-o", str(out), "--json")
    doc2 = json.loads(again.stdout)
    assert again.returncode == 1
    assert doc2["fleet"]["ran"] == 0 and doc2["fleet"]["skipped"] == 3 and doc2["fleet"]["failed"] == 1
    reason = next(r["error"] for r in doc2["results"] if r["status"] == "failed")
    # Ray's GCS marks a killed node dead after its heartbeats time out (~15 s): before, the job is
    # sent and failed when the node is found gone; after, it fails before it is sent
    assert "no board of profile pb" in reason or "every board of profile pb has left" in reason


def _profile_of(path: Path) -> str | None:
    try:
        return load_results(path).results[0].conditions.get("profile")
    except Exception:
        return None


def test_job_key_names_the_artifact_profile_and_settings() -> None:
    """A rerun skips a job only if the same artifact bytes ran on the same profile with the same settings."""
    from edgekit.bench import BenchSettings
    from edgekit.fleet.bench import job_key

    base = BenchSettings(prompt_tokens=32, gen_tokens=8, repetitions=1, warmup=0)
    key = job_key("a" * 64, "pa", 1, base, "t" * 64)
    assert key == job_key("a" * 64, "pa", 1, BenchSettings(prompt_tokens=32, gen_tokens=8, repetitions=1, warmup=0,
                                                            threads=(1, 2)), "t" * 64)  # the matrix's other threads
    others = [job_key("b" * 64, "pa", 1, base, "t" * 64), job_key("a" * 64, "pb", 1, base, "t" * 64),
              job_key("a" * 64, "pa", 2, base, "t" * 64), job_key("a" * 64, "pa", 1, base, "u" * 64),
              job_key("a" * 64, "pa", 1, BenchSettings(prompt_tokens=64, gen_tokens=8, repetitions=1, warmup=0),
                      "t" * 64),
              job_key("a" * 64, "pa", 1, BenchSettings(prompt_tokens=32, gen_tokens=8, repetitions=1, warmup=0,
                                                       device="cuda"), "t" * 64)]
    assert len({key, *others}) == 1 + len(others)
