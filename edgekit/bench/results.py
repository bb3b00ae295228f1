"""The results file of ``edgekit bench``: schema, save/load, CSV.

One JSON document per run. It carries a format tag and a schema number: a file from
another edgekit whose schema differs, or anything else, is refused with a one-line error
instead of being half-read into a report. Every result row embeds its full conditions
(host, runtime versions, threads, context, power mode, artifact sha256, date), so a row
copied out of its file still says what it measured.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit._compat import StrEnum
from edgekit.errors import CorruptFileError, InputError
from edgekit.fsutil import write_json_atomic

FORMAT_TAG = "edgekit-bench-results"
# Bump when a field changes meaning or moves; readers refuse other numbers.
SCHEMA_VERSION = 1


class Status(StrEnum):
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # Ctrl-C: the repetitions measured so far are kept
    FAILED = "failed"  # the runtime crashed or refused the artifact; error says why
    RUNNING = "running"  # only seen in a file read while a run is still writing it


@dataclass
class Stat:
    """Mean and standard deviation over repetitions, as llama-bench prints them (avg ± stdev)."""

    mean: float
    std: float
    min: float
    max: float
    n: int
    unit: str

    @classmethod
    def of(cls, values: Sequence[float], unit: str) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(0.0, 0.0, 0.0, 0.0, 0, unit)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return cls(statistics.fmean(vals), std, min(vals), max(vals), len(vals), unit)


@dataclass
class Repetition:
    prompt_tokens_per_s: float  # pp: prompt tokens / prompt eval time
    gen_tokens_per_s: float  # tg: decode steps / their time, EOS ignored
    ttft_s: float  # prompt eval + first sampled token for the pp prompt
    prompt_s: float
    gen_s: float


@dataclass
class BenchResult:
    """One artifact at one thread count."""

    artifact: str  # file or directory name
    path: str
    kind: str  # gguf | onnx | gptq
    quant: str
    size_bytes: int
    sha256: str
    backend: str = ""
    threads: int = 0
    status: str = Status.RUNNING.value
    error: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "pp512" -> asdict(Stat)
    repetitions: list[dict[str, float]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    power: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None  # from the artifact's verification in its manifest
    conditions: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchSettings:
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repetitions: int = 5
    warmup: int = 1
    threads: tuple[int, ...] = ()
    device: str = "cpu"
    n_ctx: int = 0  # 0: prompt + gen + 1, like llama-bench

    @property
    def pp_name(self) -> str:
        return f"pp{self.prompt_tokens}"

    @property
    def tg_name(self) -> str:
        return f"tg{self.gen_tokens}"

    @property
    def ctx(self) -> int:
        return self.n_ctx or self.prompt_tokens + self.gen_tokens + 1


@dataclass
class BenchResults:
    settings: BenchSettings
    host: dict[str, Any]
    results: list[BenchResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    created: str = ""
    status: str = Status.RUNNING.value
    edgekit_version: str = __version__
    schema: int = SCHEMA_VERSION
    source: str = ""  # the file it was read from (not saved)

    def to_dict(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        settings["threads"] = list(self.settings.threads)
        return {"format": FORMAT_TAG, "schema": self.schema, "edgekit_version": self.edgekit_version,
                "created": self.created, "status": self.status, "settings": settings, "host": self.host,
                "results": [asdict(r) for r in self.results], "skipped": self.skipped}

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @property
    def label(self) -> str:
        """How reports name this run: the device label and the date."""
        return f"{self.host.get('label', '?')} {self.created[:10]}".strip()


def load_results(path: Path) -> BenchResults:
    """Read a results file; a different schema or a foreign/malformed file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="pass a results file written by `edgekit bench -o FILE`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not JSON ({e})", hint="pass a results file written by `edgekit bench`") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT_TAG:
        raise CorruptFileError(path, "not an edgekit bench results file (no \"format\": \"edgekit-bench-results\")",
                               hint="pass a results file written by `edgekit bench -o FILE`")
    schema, version = data.get("schema"), data.get("edgekit_version", "?")
    if schema != SCHEMA_VERSION:
        raise InputError(f"{path} was written by edgekit {version} (results schema {schema}); this edgekit "
                         f"{__version__} reads schema {SCHEMA_VERSION}",
                         hint=f"re-run the benchmark with this edgekit, or report it with edgekit {version}")
    try:
        s = dict(data["settings"])
        s["threads"] = tuple(s.get("threads", ()))
        return BenchResults(settings=BenchSettings(**s), host=dict(data["host"]),
                            results=[BenchResult(**r) for r in data["results"]], skipped=list(data.get("skipped", [])),
                            created=str(data["created"]), status=str(data["status"]),
                            edgekit_version=str(version), schema=int(schema), source=str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(path, f"malformed results ({type(e).__name__}: {e})",
                               hint="the file was edited or truncated; re-run the benchmark") from e


def _metric(r: BenchResult, name: str, key: str) -> Any:
    return r.metrics.get(name, {}).get(key)


def csv_text(runs: Iterable[BenchResults]) -> str:
    """One row per result; its conditions flattened into ``cond.*`` columns at the end."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        pp, tg = run.settings.pp_name, run.settings.tg_name
        for r in run.results:
            row: dict[str, Any] = {
                "run": run.label, "artifact": r.artifact, "kind": r.kind, "quant": r.quant, "backend": r.backend,
                "threads": r.threads, "status": r.status, "size_bytes": r.size_bytes,
                f"{pp}_tok_s": _metric(r, pp, "mean"), f"{pp}_std": _metric(r, pp, "std"),
                f"{tg}_tok_s": _metric(r, tg, "mean"), f"{tg}_std": _metric(r, tg, "std"),
                "ttft_ms": _metric(r, "ttft_ms", "mean"), "ttft_ms_std": _metric(r, "ttft_ms", "std"),
                "repetitions": len(r.repetitions), "peak_rss_bytes": r.memory.get("peak_rss_bytes"),
                "gpu_memory_bytes": r.memory.get("gpu_memory_bytes"),
                "power_w_gen": (r.power or {}).get("gen_w"), "energy_j_per_token": (r.power or {}).get("gen_j_per_token"),
                "mean_kl": (r.quality or {}).get("mean_kl"), "ppl": (r.quality or {}).get("ppl"),
                "sha256": r.sha256,
            }
            for k, v in _flatten(r.conditions).items():
                row.setdefault(f"cond.{k}", v)
            rows.append(row)
    headers: list[str] = []
    for row in rows:
        headers += [k for k in row if k not in headers]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=headers, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out
