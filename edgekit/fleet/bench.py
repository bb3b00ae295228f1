"""``edgekit fleet bench``: one benchmark job per (artifact, profile, thread count) on the fleet.

Scheduling. A job asks Ray for one unit of ``edgekit-profile:<name>``; every board holds one
unit, so a board runs one benchmark at a time and any board of the profile may take the job.
A retry is pinned to a chosen board (node affinity) that is still alive.

Nothing finished is lost. Each finished job is written at once, atomically, as a results
file of its own (the existing schema: one result, that board's host) into the results
directory, named by the job's key -- sha256 over the artifact's sha256, the profile and the
settings -- and the merged file (``-o``) is rewritten after every job. A rerun of the same
command reads the directory and skips every job whose complete result is there.

Faults. A board that dies mid-job (Ray reports the node died, or the worker crashed): the job
goes to another live board of the same profile, up to ``retries`` times, else it is recorded
as failed with the reason. Jobs waiting for a profile whose every board has left are recorded
as failed too, not left waiting. Ctrl-C cancels what runs and keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bench.conditions import library_versions, now_utc
from edgekit.bench.results import BenchResult, BenchResults, BenchSettings, Status, load_results
from edgekit.errors import EdgekitError, InputError
from edgekit.fsutil import artifact_digest, ensure_writable_dir
from edgekit.progress import ProgressFn, report

from .cluster import FleetError, NodeInfo, cluster_nodes, connect, profile_resource
from .jobs import NEED_TRANSFER, bench_job

log = logging.getLogger(__name__)

TRANSFERS = ("auto", "shared", "object-store")
_NODE_ID = re.compile(r"node ID: ([0-9a-f]{16,})", re.IGNORECASE)
POLL_S = 1.0  # how often waiting jobs are checked against the boards still alive


@dataclass
class Job:
    key: str
    artifact: dict[str, Any]
    profile: str
    threads: int
    attempt: int = 0
    node: str | None = None  # pinned board (retries)
    tried: list[str] = field(default_factory=list)  # node ids that died under it


@dataclass
class FleetBenchOutcome:
    results: BenchResults
    output: Path
    results_dir: Path
    ran: int = 0
    skipped: int = 0  # finished in an earlier run of the same matrix
    retried: int = 0
    failed: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # retries and failures, in order


def job_key(artifact_sha256: str, profile: str, threads: int, settings: BenchSettings, text_sha256: str) -> str:
    s = asdict(settings)
    s.pop("threads")
    doc = {"artifact_sha256": artifact_sha256, "profile": profile, "threads": threads, "settings": s,
           "text_sha256": text_sha256}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def default_results_dir(output: Path) -> Path:
    return output.with_name(output.stem + "-jobs")


def _job_file(results_dir: Path, key: str) -> Path:
    return results_dir / f"{key[:24]}.json"


def _finished(results_dir: Path, key: str) -> BenchResults | None:
    """The complete result of job ``key`` from an earlier run, if its file is there and whole."""
    path = _job_file(results_dir, key)
    if not path.is_file():
        return None
    try:
        run = load_results(path)
    except EdgekitError as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    ok = [r for r in run.results if r.status == Status.COMPLETE.value
          and r.conditions.get("fleet", {}).get("job_key") == key]
    return run if ok else None


def _profiles(on: str | list[str], nodes: list[NodeInfo]) -> list[str]:
    alive = sorted({p for n in nodes if n.alive for p in n.profiles})
    wanted = alive if on == "all" or on == ["all"] else ([p.strip() for p in on.split(",")] if isinstance(on, str)
                                                         else list(on))
    wanted = [p for p in dict.fromkeys(wanted) if p]
    if not wanted:
        raise InputError("no profile to run on", hint="pass --on PROFILE[,PROFILE...] / on=, or --on all")
    if not set(wanted) & set(alive):
        raise InputError(f"no board in the cluster has profile {', '.join(wanted)}",
                         hint=f"boards advertise: {', '.join(alive) or 'nothing (join boards with edgekit fleet join)'}"
                              "; `edgekit fleet status` lists them")
    return wanted


def _text_of(text: Path | None) -> tuple[str | None, str]:
    """(content to send, or None for the packaged default, its sha256)."""
    from edgekit.demo import heldout_path

    if text is None:
        return None, hashlib.sha256(heldout_path().read_bytes()).hexdigest()
    if not Path(text).is_file():
        raise InputError(f"prompt text {text} does not exist", hint="pass a UTF-8 text file with --text / text=")
    content = Path(text).read_text(encoding="utf-8")
    return content, hashlib.sha256(content.encode()).hexdigest()


class _Driver:
    def __init__(self, ray: Any, settings: BenchSettings, transfer: str, retries: int, results_dir: Path,
                 outcome: FleetBenchOutcome, text: str | None, progress: ProgressFn | None) -> None:
        self.ray, self.settings, self.transfer, self.retries = ray, settings, transfer, retries
        self.results_dir, self.outcome, self.text, self.progress = results_dir, outcome, text, progress
        self.inflight: dict[Any, Job] = {}
        self.dead: set[str] = set()
        self.puts: dict[str, Any] = {}  # artifact sha256 -> object ref of its bytes
        self.by_key: dict[str, BenchResult] = {}
        self.total = 0
        self.on_record: Callable[[], None] = lambda: None  # rewrites the merged file
        self.remote = ray.remote(bench_job)

    # -- the boards --------------------------------------------------------------------------
    def boards(self, profile: str, nodes: list[NodeInfo] | None = None) -> list[str]:
        return [n.node_id for n in (nodes if nodes is not None else cluster_nodes(self.ray))
                if n.alive and profile in n.profiles and n.node_id not in self.dead]

    # -- submitting --------------------------------------------------------------------------
    def _ref_of(self, art: dict[str, Any]) -> Any:
        if art["sha256"] not in self.puts:
            import numpy as np

            # a plain array over a memory map: Ray's serializer copies the mapped pages straight
            # into its store (out-of-band buffer), with no copy of the file on this process's heap
            mapped = np.memmap(art["path"], dtype=np.uint8, mode="r").view(np.ndarray)
            self.puts[art["sha256"]] = self.ray.put(mapped)
        return self.puts[art["sha256"]]

    def submit(self, job: Job, with_copy: bool = False) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = {"job_key": job.key, "artifact": job.artifact, "profile": job.profile, "threads": job.threads,
                "settings": {k: v for k, v in asdict(self.settings).items() if k != "threads"},
                "text": self.text, "transfer": self.transfer, "attempt": job.attempt}
        copy = with_copy or self.transfer == "object-store"
        refs = [self._ref_of(job.artifact)] if copy and not job.artifact.get("is_dir") else []
        opts: dict[str, Any] = {"num_cpus": 0, "resources": {profile_resource(job.profile): 1}, "max_retries": 0}
        if job.node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(job.node, soft=False)
        self.inflight[self.remote.options(**opts).remote(spec, refs)] = job

    # -- results -----------------------------------------------------------------------------
    def record(self, job: Job, run: BenchResults, *, fresh: bool) -> None:
        r = run.results[0]
        self.by_key[job.key] = r
        if fresh:
            run.save(_job_file(self.results_dir, job.key))  # atomic: temp name, then rename
        self.on_record()
        done = len(self.by_key)
        where = r.conditions.get("fleet", {}).get("board", "?")
        report(self.progress, "job", f"{job.artifact['name']} on {job.profile} ({r.threads or 'all'} threads, {where}): "
               f"{r.status}{' -- ' + r.error if r.error else ''}", done, self.total)

    def fail(self, job: Job, reason: str) -> None:
        art = job.artifact
        r = BenchResult(artifact=art["name"], path=art["path"], kind=art["kind"], quant=art["quant"],
                        size_bytes=art["size"], sha256=art["sha256"], threads=job.threads,
                        status=Status.FAILED.value, error=reason, quality=art.get("quality"),
                        conditions={"profile": job.profile, "artifact_sha256": art["sha256"], "date": now_utc(),
                                    "fleet": {"profile": job.profile, "job_key": job.key, "attempt": job.attempt,
                                              "boards_died": job.tried}})
        self.outcome.failed += 1
        self.outcome.events.append({"event": "failed", "job_key": job.key, "artifact": art["name"],
                                    "profile": job.profile, "threads": job.threads, "reason": reason})
        log.warning("%s on %s: %s", art["name"], job.profile, reason)
        self.record(job, BenchResults(settings=self.settings, host={"profile": job.profile}, results=[r],
                                      created=now_utc(), status=Status.FAILED.value), fresh=True)

    def done(self, job: Job, out: dict[str, Any]) -> None:
        if out.get("status") == NEED_TRANSFER:
            self.submit(job, with_copy=True)  # the board does not see the file: send it a copy
            return
        r = BenchResult(**out["result"])
        s = BenchSettings(**{**asdict(self.settings), "threads": (job.threads,)})
        self.outcome.ran += 1
        self.record(job, BenchResults(settings=s, host=out["host"], results=[r], created=now_utc(),
                                      status=r.status), fresh=True)

    def board_died(self, job: Job, error: BaseException) -> None:
        m = _NODE_ID.search(str(error))
        if m:
            self.dead.add(m.group(1))
            job.tried.append(m.group(1))
        elif job.node:
            self.dead.add(job.node)
            job.tried.append(job.node)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first}"
        candidates = self.boards(job.profile)
        if candidates and job.attempt < self.retries:
            job.attempt += 1
            busy = {j.node for j in self.inflight.values()}
            job.node = next((n for n in candidates if n not in busy), candidates[0])
            self.outcome.retried += 1
            self.outcome.events.append({"event": "retry", "job_key": job.key, "artifact": job.artifact["name"],
                                        "profile": job.profile, "node": job.node, "reason": reason})
            report(self.progress, "retry", f"{job.artifact['name']} on {job.profile}: {reason}; "
                   f"retrying on board {job.node[:8]} (attempt {job.attempt + 1})")
            self.submit(job)
            return
        why = "no other board of this profile is alive" if not candidates else f"{job.attempt + 1} attempts"
        self.fail(job, f"the board died mid-job ({reason}); {why}")

    def orphans(self) -> None:
        """Jobs waiting on a profile (or a pinned board) that has no live board left: failed, not left waiting."""
        nodes = cluster_nodes(self.ray)
        for ref, job in list(self.inflight.items()):
            alive = self.boards(job.profile, nodes)
            if job.node is not None and job.node not in alive and alive:
                self.ray.cancel(ref, force=True)
                del self.inflight[ref]
                job.node = alive[0]
                self.submit(job)
            elif not alive:
                self.ray.cancel(ref, force=True)
                del self.inflight[ref]
                self.fail(job, f"every board of profile {job.profile} has left the cluster")

    def loop(self) -> None:
        from ray.exceptions import (
            NodeDiedError,
            ObjectLostError,
            RayTaskError,
            TaskCancelledError,
            WorkerCrashedError,
        )

        system = (NodeDiedError, WorkerCrashedError, ObjectLostError)
        last_check = 0.0
        while self.inflight:
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                job = self.inflight.pop(ref)
                try:
                    self.done(job, self.ray.get(ref))
                except system as e:
                    self.board_died(job, e)
                except TaskCancelledError:
                    continue
                except RayTaskError as e:  # the job itself raised (sha256 mismatch, unreadable artifact)
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                    msg = cause.one_line() if isinstance(cause, EdgekitError) else f"{type(cause).__name__}: {cause}"
                    self.fail(job, msg.strip().splitlines()[0])
            if time.monotonic() - last_check >= POLL_S:
                self.orphans()
                last_check = time.monotonic()

    def cancel_all(self) -> None:
        for ref in list(self.inflight):
            try:
                self.ray.cancel(ref, force=True)
            except Exception as e:  # already finished or its node is gone
                log.info("cancel: %s", e)
        self.inflight.clear()


def _artifact_record(a: Any) -> dict[str, Any]:
    size, digest = artifact_digest(a.path)
    return {"name": a.path.name, "path": str(Path(a.path).resolve()), "kind": a.kind, "quant": a.quant,
            "quality": a.quality, "size": size, "sha256": digest, "is_dir": Path(a.path).is_dir()}


def fleet_bench(paths: list[Path], settings: BenchSettings, *, on: str | list[str] = "all", output: Path,
                results_dir: Path | None = None, address: str | None = None, transfer: str = "auto",
                retries: int = 2, text: Path | None = None, progress: ProgressFn | None = None) -> FleetBenchOutcome:
    """Run the matrix; the merged results (existing schema) are saved to ``output`` as jobs finish."""
    from edgekit.bench.run import resolve_artifacts

    if transfer not in TRANSFERS:
        raise InputError(f"unknown transfer {transfer!r}", hint=f"--transfer / transfer=: {', '.join(TRANSFERS)}")
    if settings.prompt_tokens < 1 or settings.gen_tokens < 1 or settings.repetitions < 1 or settings.warmup < 0:
        raise InputError("prompt tokens, gen tokens and repetitions must be >= 1 (warm-up >= 0)")
    if retries < 0:
        raise InputError("retries must be >= 0", hint="--retries / retries=")
    artifacts, skipped = resolve_artifacts(list(paths))
    text_content, text_sha = _text_of(text)
    threads = settings.threads or (0,)  # 0: every board its own usable cores, as `edgekit bench` does
    ray = connect(address)
    nodes = cluster_nodes(ray)
    profiles = _profiles(on, nodes)
    output = Path(output)
    results_dir = ensure_writable_dir(Path(results_dir) if results_dir else default_results_dir(output))
    arts = [_artifact_record(a) for a in artifacts]
    jobs = [Job(job_key(a["sha256"], p, t, settings, text_sha), a, p, t) for a in arts for p in profiles for t in threads]
    host = {"label": f"edgekit fleet ({len(profiles)} profiles)", "profile": ",".join(profiles),
            "fleet": {"profiles": profiles, "boards": [asdict(n) for n in nodes], "results_dir": str(results_dir)},
            "libraries": library_versions(), "power": {"mode": "per board (see each result's conditions)"}}
    merged_settings = BenchSettings(**{**asdict(settings), "threads": tuple(threads)})
    merged = BenchResults(settings=merged_settings, host=host, skipped=skipped, created=now_utc())
    outcome = FleetBenchOutcome(merged, output, results_dir)
    driver = _Driver(ray, settings, transfer, retries, results_dir, outcome, text_content, progress)
    driver.total = len(jobs)

    def save() -> None:
        merged.results = [driver.by_key[j.key] for j in jobs if j.key in driver.by_key]
        ran = sorted({r.threads for r in merged.results if r.threads})
        merged.settings = BenchSettings(**{**asdict(merged_settings), "threads": tuple(ran or threads)})
        merged.save(output)

    alive_profiles = {p for n in nodes if n.alive for p in n.profiles}
    for job in jobs:
        earlier = _finished(results_dir, job.key)
        if earlier is not None:
            outcome.skipped += 1
            driver.record(job, earlier, fresh=False)
        elif job.profile not in alive_profiles:
            driver.fail(job, f"no board of profile {job.profile} is in the cluster")
    save()
    todo = [j for j in jobs if j.key not in driver.by_key]
    report(progress, "fleet", f"{len(jobs)} jobs on {len(profiles)} profiles: {outcome.skipped} done before, "
           f"{len(todo)} to run")
    driver.on_record = save
    try:
        for job in todo:
            driver.submit(job)
        driver.loop()
    except KeyboardInterrupt:
        driver.cancel_all()
        merged.status = Status.INTERRUPTED.value
        save()
        raise
    except BaseException:
        driver.cancel_all()
        merged.status = Status.FAILED.value
        save()
        raise
    merged.status = Status.COMPLETE.value if not outcome.failed else Status.FAILED.value
    if any(r.status != Status.COMPLETE.value for r in merged.results):
        merged.status = Status.FAILED.value
    save()
    return outcome


__all__ = ["TRANSFERS", "FleetBenchOutcome", "FleetError", "default_results_dir", "fleet_bench", "job_key"]
