"""What runs on a board: one benchmark job, one conversion job (each inside a Ray task).

A benchmark job finds its artifact (the same path, if the board sees it with the right
sha256, else the copy the driver put in Ray's object store, cached on the board by sha256),
samples what Ray costs the idle board, then runs the existing ``edgekit bench`` on it -- the
bench worker in a fresh process, as on a single machine -- and returns the result with the
board's identity in its conditions.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgekit.errors import InputError
from edgekit.fsutil import artifact_digest, atomic_output, sha256_file

from .cluster import board_facts_here

log = logging.getLogger(__name__)

NEED_TRANSFER = "need-transfer"  # the answer of a board that does not see the artifact at its path


def _ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def artifact_cache(sha256: str) -> Path:
    from edgekit.profiles.store import edgekit_home

    return edgekit_home() / "fleet" / "artifacts" / sha256


def _matches(path: Path, size: int, sha256: str) -> bool:
    if not path.exists():
        return False
    if path.is_file() and path.stat().st_size != size:
        return False
    return artifact_digest(path) == (size, sha256)


def _from_object_store(art: dict[str, Any], ref: Any) -> Path:
    """The artifact's bytes from the object store into the board's cache (sha256 checked)."""
    import ray

    target = artifact_cache(art["sha256"]) / art["name"]
    if target.is_file() and target.stat().st_size == art["size"] and sha256_file(target) == art["sha256"]:
        return target  # cached by an earlier job: content-addressed, nothing to copy
    data = ray.get(ref)  # a read-only view of the object store's copy (numpy uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
        got = sha256_file(tmp)
        if got != art["sha256"]:
            raise InputError(f"{art['name']}: the copy received has sha256 {got[:12]}, expected {art['sha256'][:12]}",
                             hint="the artifact changed while the matrix ran; run the command again")
    return target


def locate_artifact(art: dict[str, Any], transfer: str, refs: list[Any]) -> tuple[Path, str] | None:
    """(local path, how it got here), or None when the board needs a copy it was not sent."""
    path = Path(art["path"])
    if transfer in ("auto", "shared") and _matches(path, art["size"], art["sha256"]):
        return path, "shared path (sha256 checked)"
    if transfer == "shared":
        board = board_facts_here().get("name", "?")
        raise InputError(f"{art['name']}: board {board} has no file at {path} with sha256 {art['sha256'][:12]}",
                         hint="put the artifacts on a path every board mounts, or use --transfer object-store "
                              "/ transfer='object-store'")
    if not refs:
        if not Path(art["path"]).is_file() and art.get("is_dir"):
            raise InputError(f"{art['name']} is a directory: the object store carries single files",
                             hint="put it on a path every board mounts (--transfer shared / transfer='shared')")
        return None
    return _from_object_store(art, refs[0]), "object store (sha256 checked)"


def bench_job(spec: dict[str, Any], refs: list[Any]) -> dict[str, Any]:
    """One (artifact, profile, threads) benchmark on this board. ``refs`` is a list so Ray does
    not fetch the artifact's bytes before the job knows whether it needs them."""
    from edgekit.bench import BenchSettings, run_bench
    from edgekit.profiles.store import all_profiles

    from . import cost

    t0 = time.monotonic()
    node_id = _ray_node_id()
    board = board_facts_here()
    art = spec["artifact"]
    found = locate_artifact(art, spec["transfer"], refs)
    if found is None:
        return {"status": NEED_TRANSFER, "node_id": node_id}
    local, how = found
    idle = cost.sample(float(spec.get("idle_window_s", 0.5)))
    t = int(spec["threads"])
    settings = BenchSettings(**{**spec["settings"], "threads": (t,) if t else ()})  # 0: this board's cores
    profile = spec["profile"]
    known = profile in all_profiles()
    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-") as tmp:
        text = None
        if spec.get("text") is not None:
            text = Path(tmp) / "prompt.txt"
            text.write_text(spec["text"], encoding="utf-8")
        during = cost.DuringRun()
        t_run = time.monotonic()
        results = run_bench([local], settings, text=text, profile=profile if known else None,
                            label=str(board.get("name") or profile))
        ray_during = during.result()
        run_s = time.monotonic() - t_run
    r = results.results[0]
    r.quant = art["quant"]
    r.quality = art.get("quality")
    host = dict(results.host)
    host.update(profile=profile, profile_origin=board.get("profile_origin"), fleet_board=board)
    r.conditions.update(profile=profile, device_label=host.get("label"))
    r.conditions["fleet"] = {"board": board.get("name"), "hostname": board.get("hostname"), "node_id": node_id,
                             "profile": profile, "job_key": spec["job_key"], "attempt": spec.get("attempt", 0),
                             "artifact_transfer": how, "source_path": art["path"],
                             # the job's own time on the board: finding the artifact + the idle
                             # sample, then `edgekit bench` (host detection, the fresh worker)
                             "setup_s": round(t_run - t0, 3), "bench_s": round(run_s, 3)}
    r.conditions["ray_worker"] = {"idle": idle, "during_run": ray_during}
    return {"status": "done", "node_id": node_id, "board": board, "host": host, "result": asdict(r)}
