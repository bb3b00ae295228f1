"""Joining boards to a Ray cluster and listing them.

``edgekit fleet join`` is a thin wrapper over ``ray start``: it detects the board (the same
detector as ``edgekit profile detect``), advertises it as one unit of ``edgekit-profile:<name>``
and hands the detected facts to the node through its environment (:data:`BOARD_ENV`; Ray's
workers inherit the raylet's environment), so every job that runs there knows which board it
is on without a file or a second detection.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.errors import DependencyError, EdgekitError, InputError

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "edgekit-profile:"
BOARD_ENV = "EDGEKIT_FLEET_BOARD"  # JSON of the board's detected facts, set by `fleet join`
LOOPBACK = "127.0.0.1"
INSTALL = 'pip install "edgekit[fleet]"'


class FleetError(EdgekitError):
    """The cluster cannot be reached or cannot do what was asked."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise DependencyError("ray", "`edgekit fleet`", INSTALL) from e
    return ray


def profile_resource(profile: str) -> str:
    return RESOURCE_PREFIX + profile


def profiles_of(resources: dict[str, float]) -> list[str]:
    return sorted(k[len(RESOURCE_PREFIX):] for k in resources if k.startswith(RESOURCE_PREFIX))


def _valid_profile(name: str) -> str:
    if not name or any(c.isspace() or c in ",:" for c in name):
        raise InputError(f"profile name {name!r} is not usable as a Ray resource",
                         hint="use letters, digits, '-', '_' or '.' (--profile / profile=)")
    return name


@dataclass
class BoardFacts:
    """What a board says about itself when it joins (recorded in every result it produces)."""

    name: str
    profile: str
    profile_origin: str  # "given" (--profile) or "detected"
    hostname: str
    device: str
    cpu_model: str
    cores: int
    machine: str
    memory_gib: float
    gpu: str | None
    edgekit_version: str
    joined: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def detect_board(profile: str | None = None, name: str | None = None) -> BoardFacts:
    """This host's facts; the profile name is ``profile`` or the detected one
    (a shipped profile matched by device-tree model, else ``host``)."""
    from edgekit import __version__
    from edgekit.bench.conditions import now_utc
    from edgekit.profiles.detect import HOST_NAME, detect_host, host_facts, match_shipped, usable_cores
    from edgekit.profiles.store import shipped_profiles

    facts = host_facts()
    if profile:
        chosen, origin = profile, "given"
    else:
        matched = match_shipped(facts, shipped_profiles())
        chosen = matched.name if matched else detect_host(facts=facts).name
        chosen = HOST_NAME if not chosen else chosen
        origin = "detected"
    host = socket.gethostname()
    device = facts.device_model or (facts.gpu.name if facts.gpu else "") or facts.cpu_model
    return BoardFacts(name=name or host, profile=_valid_profile(chosen), profile_origin=origin, hostname=host,
                      device=device, cpu_model=facts.cpu_model, cores=usable_cores(), machine=facts.machine,
                      memory_gib=round(facts.mem_total_gib, 2), gpu=facts.gpu.name if facts.gpu else None,
                      edgekit_version=__version__, joined=now_utc())


def board_facts_here() -> dict[str, Any]:
    """The facts `fleet join` gave this node (inside a Ray task), else what can be told now."""
    raw = os.environ.get(BOARD_ENV)
    if raw:
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError:
            log.warning("%s is not JSON; detecting the board again", BOARD_ENV)
    return {**asdict(detect_board(profile="unknown")), "profile_origin": "not joined with edgekit fleet join"}


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def auth_env() -> dict[str, str]:
    """RAY_AUTH_MODE=token when it is unset and a Ray token is available here.

    Ray 2.60's ``ray start --head`` turns token authentication on by itself when it finds a
    token (``~/.ray/auth_token``), but ``ray start --address`` and a connecting driver do not,
    so a board holding the same token is refused ("InvalidAuthToken ... RAY_AUTH_MODE is
    currently 'disabled'"). Saying it explicitly makes every node and driver agree; an explicit
    RAY_AUTH_MODE (``disabled`` included) is left as it is."""
    if os.environ.get("RAY_AUTH_MODE") is None and _token_available():
        return {"RAY_AUTH_MODE": "token"}
    return {}


@dataclass
class JoinPlan:
    command: list[str]
    env: dict[str, str]  # added to ray start's environment
    board: BoardFacts


def join_plan(head: str | None, *, profile: str | None = None, name: str | None = None, port: int = 6379,
              node_ip: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None,
              temp_dir: str | None = None, block: bool = False, extra_resources: dict[str, float] | None = None,
              board: BoardFacts | None = None) -> JoinPlan:
    """The ``ray start`` command line for this board. ``head`` None starts the head node.

    The node listens on loopback unless ``node_ip`` says otherwise (or the head is remote:
    then Ray picks the interface that reaches it), so a join on a laptop opens no port to
    the network by accident."""
    board = board or detect_board(profile, name)
    if shutil.which("ray") is None:
        import_ray()  # the clearer error when Ray is missing altogether
        raise DependencyError("the `ray` command", "`edgekit fleet join`", INSTALL)
    resources = {profile_resource(board.profile): 1.0, **(extra_resources or {})}
    cmd = ["ray", "start", "--resources", json.dumps(resources), "--disable-usage-stats"]
    ip: str | None
    if head is None:
        cmd += ["--head", "--port", str(port), "--include-dashboard=false"]
        ip = node_ip or LOOPBACK
    else:
        cmd += ["--address", head]
        ip = node_ip or (LOOPBACK if head.split(":")[0] in (LOOPBACK, "localhost") else None)
    if ip:
        cmd += ["--node-ip-address", ip]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    if temp_dir is not None:
        cmd += ["--temp-dir", temp_dir]
    if block:
        cmd.append("--block")
    return JoinPlan(cmd, {BOARD_ENV: board.to_json(), **auth_env()}, board)


def run_join(plan: JoinPlan) -> subprocess.CompletedProcess[str]:
    """Run ``ray start`` (not --block); its output goes to the log, a failure is one line."""
    proc = subprocess.run(plan.command, env={**os.environ, **plan.env}, capture_output=True, text=True)
    log.info("ray start: %s%s", proc.stdout, proc.stderr)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise FleetError(f"ray start failed ({proc.returncode}): {tail[-1] if tail else 'no output'}",
                         hint="check the head address (HEAD / head=) and that the head runs the same Ray version")
    return proc


def connect(address: str | None) -> Any:
    """ray.init against an existing cluster (never starts one); Ray's chatter to the log."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    _ray_prints_to_log(ray)
    os.environ.update(auth_env())  # the driver's Ray reads its mode from the environment (see auth_env)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise FleetError(f"cannot reach a Ray cluster at {address}: {str(e).splitlines()[0]}",
                         hint="start one with `edgekit fleet join --head` or pass its address "
                              "(--address / address=)") from e
    return ray


def _ray_prints_to_log(ray: Any) -> None:
    """The driver's Ray prints cluster errors ("(raylet) Raylet is terminated ...") to stdout
    from a thread of its own, whatever ``log_to_driver`` says; stdout is for edgekit's tables
    and JSON, so those lines go to the log (``-v`` shows them). The thread looks the function
    up at call time, so replacing the module attribute is enough."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if worker is None or not hasattr(worker, "print_to_stdstream"):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            log.info("ray (%s): %s", data.get("pid"), line)

    worker.print_to_stdstream = to_log


@dataclass
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    profiles: list[str]
    resources: dict[str, float]


def cluster_nodes(ray: Any) -> list[NodeInfo]:
    return [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", ""), bool(n.get("Alive")),
                     profiles_of(n.get("Resources", {})), dict(n.get("Resources", {}))) for n in ray.nodes()]


def board_status() -> dict[str, Any]:
    """Runs on one board (a Ray task pinned to its node): facts, free memory, whether a
    benchmark runs under this node's raylet right now."""
    import psutil

    from .cost import node_processes

    bench = [p for p in node_processes() if _is_bench_worker(p)]
    return {"board": board_facts_here(), "memory_available_bytes": psutil.virtual_memory().available,
            "memory_total_bytes": psutil.virtual_memory().total, "busy": bool(bench),
            "bench_pids": [p.pid for p in bench], "load_average_1m": os.getloadavg()[0]}


def _is_bench_worker(p: Any) -> bool:
    try:
        return "edgekit.bench.worker" in " ".join(p.cmdline())
    except Exception:  # gone or not ours: not a benchmark
        return False


def fleet_status(address: str | None = None, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """One row per node: its board facts, profiles, free memory, busy (a dead node: alive False)."""
    ray = connect(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = cluster_nodes(ray)
    remote = ray.remote(board_status)
    refs = {n.node_id: remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n.node_id, soft=False)).remote() for n in nodes if n.alive}
    rows = []
    for n in nodes:
        row: dict[str, Any] = {"node_id": n.node_id, "address": n.address, "alive": n.alive, "profiles": n.profiles,
                               "cpus": n.resources.get("CPU", 0)}
        if n.node_id in refs:
            try:
                row.update(ray.get(refs[n.node_id], timeout=timeout_s))
            except Exception as e:  # a node dying while asked: listed, with why it did not answer
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rows.append(row)
    return rows
