"""The hardware-profile schema: typed dataclasses, closed sets as enums, and one validator.

Units: memory in GiB (2^30 bytes; a vendor's "8 GB" of DRAM is 8 GiB), bandwidth in GB/s
(10^9 bytes/s), compute in TFLOPS / TOPS / GFLOP/s as named. A profile is a TOML file (``profiles/data/NAME.toml`` shipped, or a calibrated one under the
user's edgekit directory). Every number is a :class:`Figure` carrying where it came from, so
a recommendation can say which of its inputs were measured and which were read off a
datasheet. The validator rejects unknown keys (a typo must not silently drop a figure) and
reports problems as ``file: field: problem``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit._compat import StrEnum
from edgekit.errors import InputError, UnknownChoiceError


class SourceKind(StrEnum):
    """Where a figure comes from; what a reader should trust it for."""

    DATASHEET = "datasheet"  # vendor spec sheet (peak, theoretical)
    NVPMODEL = "nvpmodel"  # NVIDIA's power-mode configuration (per-mode clocks)
    MEASURED = "measured"  # measured on the device (edgekit calibrate, published measurement)
    PUBLISHED = "published"  # a third-party benchmark or runtime log
    DETECTED = "detected"  # read from the running host (/proc, NVML)
    ESTIMATED = "estimated"  # derived or assumed; the ref says how


class DeviceClass(StrEnum):
    """Keys the efficiency table: runtimes reach different fractions of the roofline per class."""

    JETSON = "jetson"
    DISCRETE_GPU = "discrete-gpu"
    APPLE_SILICON = "apple-silicon"
    ARM_CPU = "arm-cpu"
    X86_CPU = "x86-cpu"


class MemoryKind(StrEnum):
    UNIFIED = "unified"  # CPU and accelerator share one pool (Jetson, Apple, CPU-only hosts)
    DISCRETE = "discrete"  # the accelerator has its own memory (desktop GPUs)


class Runtime(StrEnum):
    LLAMA_CPP = "llama.cpp"
    ONNXRUNTIME = "onnxruntime"


class Backend(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    METAL = "metal"


class OnnxPrecision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT4 = "int4"


class Origin(StrEnum):
    """Where the profile itself came from (not stored in the file)."""

    SHIPPED = "shipped"
    CALIBRATED = "calibrated"
    DETECTED = "detected"


def _with_source(d: dict[str, Any], source: SourceKind, ref: str) -> dict[str, Any]:
    """Every figure in a profile file says where it comes from: ``source`` and, if any, ``ref``."""
    d["source"] = source.value
    if ref:
        d["ref"] = ref
    return d


@dataclass(frozen=True)
class Figure:
    value: float
    source: SourceKind
    ref: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _with_source({"value": self.value}, self.source, self.ref)


@dataclass(frozen=True)
class PowerMode:
    name: str
    bandwidth_gbs: Figure  # memory bandwidth in this mode (Jetson: EMC clock x bus width x 2)
    power_w: Figure | None = None
    emc_mhz: Figure | None = None
    note: str = ""


@dataclass(frozen=True)
class RuntimeSupport:
    runtime: Runtime
    backend: Backend
    onnx: tuple[OnnxPrecision, ...] = ()  # ONNX precisions worth running there (onnxruntime only)
    note: str = ""


@dataclass(frozen=True)
class Compute:
    cpu_model: str
    cpu_cores: Figure
    isa: tuple[str, ...] = ()
    cpu_gflops: Figure | None = None  # fp32 matmul rate of the CPU
    gpu_name: str = ""
    gpu_fp16_tflops: Figure | None = None  # dense fp16 tensor rate
    gpu_int8_tops: Figure | None = None
    cuda_cc: str = ""


@dataclass(frozen=True)
class ReadCurve:
    """Read bandwidth of the CPU against working-set size: the caches in numbers.

    A model whose bytes per token fit in a cache level is read at that level's rate, which
    can be several times the DRAM figure. Reported cache sizes do not say where the rate
    really drops (a VM may report a host's L3 it gets a slice of), so the curve is measured
    (`edgekit profile calibrate`) or taken from a published measurement, never derived from
    a datasheet cache size. ``points`` are (working set MiB, GB/s), sizes increasing."""

    points: tuple[tuple[float, float], ...]
    source: SourceKind
    ref: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _with_source({"points": [[mib, gbs] for mib, gbs in self.points]}, self.source, self.ref)


@dataclass(frozen=True)
class KernelRate:
    """One weight type's llama.cpp CPU kernels on the host, measured (`edgekit profile calibrate`).

    ``decode``: (working set MiB, GB/s) pairs, sizes increasing: the rate at which a batch-1
    decode step reads this type's weights when the model reads that many MiB a token (in the
    caches at the small end, from DRAM at the large). ``prompt_gflops``: the batched prompt
    kernel's rate, 2 FLOP per weight per token."""

    decode: tuple[tuple[float, float], ...]
    prompt_gflops: float

    def to_dict(self) -> dict[str, Any]:
        return {"decode": [[mib, gbs] for mib, gbs in self.decode], "prompt_gflops": self.prompt_gflops}


@dataclass(frozen=True)
class KernelTable:
    """[kernels]: per ggml type (F16, Q4_K, IQ3_S, ...) its measured rates, and how they were measured."""

    types: Mapping[str, KernelRate]
    threads: int
    source: SourceKind
    ref: str = ""
    layer_us: float | None = None  # fixed cost per layer per decode step (norms, rope, graph), measured

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"threads": self.threads}
        if self.layer_us is not None:
            d["layer_us"] = self.layer_us
        d["types"] = {k: v.to_dict() for k, v in self.types.items()}
        return _with_source(d, self.source, self.ref)


@dataclass(frozen=True)
class Profile:
    name: str
    display_name: str
    device_class: DeviceClass
    memory_kind: MemoryKind
    memory_gb: Figure  # nominal memory of the device (or the GPU, for discrete)
    usable_memory_gb: Figure  # what a model can really have
    compute: Compute
    power_modes: tuple[PowerMode, ...]
    default_mode: str
    runtimes: tuple[RuntimeSupport, ...]
    software: Mapping[str, str] = field(default_factory=dict)
    detect_model: tuple[str, ...] = ()  # substrings of /proc/device-tree/model that identify it
    notes: str = ""
    origin: Origin = Origin.SHIPPED
    path: str = ""
    read_curve: ReadCurve | None = None  # [memory] read_curve; None: one bandwidth for every size
    kernels: KernelTable | None = None  # [kernels]: the host's measured llama.cpp kernels (calibrated only)

    def mode(self, name: str | None = None) -> PowerMode:
        wanted = name or self.default_mode
        for m in self.power_modes:
            if m.name.lower() == wanted.lower():
                return m
        raise UnknownChoiceError(f"power mode of {self.name}", wanted, [m.name for m in self.power_modes])


class ProfileFormatError(InputError):
    """A profile file that does not follow the schema: names the file, the field and the problem."""

    def __init__(self, file: str, field_path: str, problem: str) -> None:
        super().__init__(f"{file}: {field_path}: {problem}",
                         hint="fix the profile file (see profiles/data/*.toml for the format)")
        self.file, self.field, self.problem = file, field_path, problem


# -- validation ---------------------------------------------------------------------------

_TOP_KEYS = {"name", "display_name", "device_class", "memory_kind", "default_mode", "detect_model", "notes",
             "memory", "compute", "software", "power_modes", "runtimes", "kernels"}
_MEMORY_KEYS = {"total_gb", "usable_gb", "read_curve"}
_COMPUTE_KEYS = {"cpu_model", "cpu_cores", "isa", "cpu_gflops", "gpu_name", "gpu_fp16_tflops", "gpu_int8_tops",
                 "cuda_cc"}
_MODE_KEYS = {"name", "bandwidth_gbs", "power_w", "emc_mhz", "note"}
_RUNTIME_KEYS = {"runtime", "backend", "onnx", "note"}
_FIGURE_KEYS = {"value", "source", "ref"}
_CURVE_KEYS = {"points", "source", "ref"}
_KERNEL_KEYS = {"threads", "types", "source", "ref", "layer_us"}
_RATE_KEYS = {"decode", "prompt_gflops"}


class _V:
    """Walks one parsed file; every check knows the file and the dotted field path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, problem: str) -> ProfileFormatError:
        return ProfileFormatError(self.file, where, problem)

    def table(self, data: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where, f"expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return data

    def entries(self, d: dict[str, Any], key: str, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """A non-empty ``[[key]]`` array of tables, each checked, with the path to report errors at."""
        raw = self.required(d, key, "")
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, f"expected at least one [[{key}]] entry")
        return [(f"{key}[{i}]", self.table(item, f"{key}[{i}]", allowed)) for i, item in enumerate(raw)]

    def required(self, d: dict[str, Any], key: str, where: str) -> Any:
        if key not in d:
            raise self.fail(_join(where, key), "missing")
        return d[key]

    def string(self, d: dict[str, Any], key: str, where: str, *, required: bool = True, default: str = "") -> str:
        if key not in d:
            if required:
                raise self.fail(_join(where, key), "missing")
            return default
        v = d[key]
        if not isinstance(v, str) or (required and not v.strip()):
            raise self.fail(_join(where, key), f"expected a non-empty string, got {v!r}")
        return v

    def strings(self, d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        v = d.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(_join(where, key), "expected a list of strings")
        return tuple(v)

    def enum(self, d: dict[str, Any], key: str, where: str, kind: type[StrEnum]) -> Any:
        v = self.required(d, key, where)
        try:
            return kind(v)
        except ValueError:
            raise self.fail(_join(where, key), f"{v!r} is not one of {', '.join(m.value for m in kind)}") from None

    def figure(self, d: dict[str, Any], key: str, where: str, *, required: bool = True) -> Figure | None:
        path = _join(where, key)
        if key not in d:
            if required:
                raise self.fail(path, "missing")
            return None
        t = self.table(d[key], path, _FIGURE_KEYS)
        value = self.required(t, "value", path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{path}.value", f"expected a number, got {value!r}")
        if value <= 0:
            raise self.fail(f"{path}.value", f"must be positive, got {value}")
        source = self.enum(t, "source", path, SourceKind)
        ref = t.get("ref", "")
        if not isinstance(ref, str):
            raise self.fail(f"{path}.ref", "expected a string")
        return Figure(float(value), source, ref)


    def pairs(self, raw: Any, path: str, least: int) -> tuple[tuple[float, float], ...]:
        """A list of [MiB, GB/s] pairs, sizes increasing."""
        if not isinstance(raw, list) or len(raw) < least:
            raise self.fail(path, f"expected at least {'two' if least == 2 else 'one'} [MiB, GB/s] "
                                  f"pair{'s' if least == 2 else ''}")
        points: list[tuple[float, float]] = []
        for i, p in enumerate(raw):
            if (not isinstance(p, list) or len(p) != 2
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in p)):
                raise self.fail(f"{path}[{i}]", f"expected [MiB, GB/s], two positive numbers, got {p!r}")
            if points and p[0] <= points[-1][0]:
                raise self.fail(f"{path}[{i}]", "working-set sizes must increase")
            points.append((float(p[0]), float(p[1])))
        return tuple(points)

    def ref(self, t: dict[str, Any], path: str) -> str:
        ref = t.get("ref", "")
        if not isinstance(ref, str):
            raise self.fail(f"{path}.ref", "expected a string")
        return ref

    def curve(self, d: dict[str, Any], key: str, where: str) -> ReadCurve | None:
        if key not in d:
            return None
        path = _join(where, key)
        t = self.table(d[key], path, _CURVE_KEYS)
        points = self.pairs(self.required(t, "points", path), f"{path}.points", 2)
        return ReadCurve(points, self.enum(t, "source", path, SourceKind), self.ref(t, path))

    def kernels(self, d: dict[str, Any], key: str) -> KernelTable | None:
        if key not in d:
            return None
        t = self.table(d[key], key, _KERNEL_KEYS)
        threads = self.required(t, "threads", key)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise self.fail(f"{key}.threads", f"expected a positive integer, got {threads!r}")
        raw = self.table(self.required(t, "types", key), f"{key}.types", set(self.required(t, "types", key)))
        import gguf

        rates: dict[str, KernelRate] = {}
        for name, entry in raw.items():
            path = f"{key}.types.{name}"
            if name not in gguf.GGMLQuantizationType.__members__:
                raise self.fail(path, "not a ggml type name (F16, Q4_K, IQ3_S, ...)")
            e = self.table(entry, path, _RATE_KEYS)
            gflops = self.required(e, "prompt_gflops", path)
            if isinstance(gflops, bool) or not isinstance(gflops, int | float) or gflops < 0:
                raise self.fail(f"{path}.prompt_gflops", f"expected a non-negative number, got {gflops!r}")
            rates[name] = KernelRate(self.pairs(self.required(e, "decode", path), f"{path}.decode", 1), float(gflops))
        layer_us = t.get("layer_us")
        if layer_us is not None and (isinstance(layer_us, bool) or not isinstance(layer_us, int | float)
                                     or layer_us < 0):
            raise self.fail(f"{key}.layer_us", f"expected a non-negative number, got {layer_us!r}")
        return KernelTable(rates, threads, self.enum(t, "source", key, SourceKind), self.ref(t, key),
                           None if layer_us is None else float(layer_us))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def parse_profile(data: Any, file: str, *, origin: Origin = Origin.SHIPPED) -> Profile:
    """Validate parsed TOML and build a :class:`Profile`; raise :class:`ProfileFormatError`."""
    v = _V(file)
    top = v.table(data, "", _TOP_KEYS)
    name = v.string(top, "name", "")
    mem = v.table(v.required(top, "memory", ""), "memory", _MEMORY_KEYS)
    total = v.figure(mem, "total_gb", "memory")
    usable = v.figure(mem, "usable_gb", "memory")
    assert total is not None and usable is not None
    if usable.value > total.value:
        raise v.fail("memory.usable_gb.value", f"{usable.value} exceeds memory.total_gb ({total.value})")

    comp = v.table(v.required(top, "compute", ""), "compute", _COMPUTE_KEYS)
    cores = v.figure(comp, "cpu_cores", "compute")
    assert cores is not None
    compute = Compute(
        cpu_model=v.string(comp, "cpu_model", "compute"),
        cpu_cores=cores,
        isa=v.strings(comp, "isa", "compute"),
        cpu_gflops=v.figure(comp, "cpu_gflops", "compute", required=False),
        gpu_name=v.string(comp, "gpu_name", "compute", required=False),
        gpu_fp16_tflops=v.figure(comp, "gpu_fp16_tflops", "compute", required=False),
        gpu_int8_tops=v.figure(comp, "gpu_int8_tops", "compute", required=False),
        cuda_cc=v.string(comp, "cuda_cc", "compute", required=False),
    )

    modes = []
    for where, t in v.entries(top, "power_modes", _MODE_KEYS):
        bw = v.figure(t, "bandwidth_gbs", where)
        assert bw is not None
        modes.append(PowerMode(v.string(t, "name", where), bw, v.figure(t, "power_w", where, required=False),
                               v.figure(t, "emc_mhz", where, required=False), v.string(t, "note", where, required=False)))
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise v.fail("power_modes", f"duplicate mode names in {names}")
    default_mode = v.string(top, "default_mode", "")
    if default_mode not in names:
        raise v.fail("default_mode", f"{default_mode!r} is not one of the power modes {names}")

    runtimes = []
    for where, t in v.entries(top, "runtimes", _RUNTIME_KEYS):
        rt = v.enum(t, "runtime", where, Runtime)
        precisions = []
        for j, p in enumerate(v.strings(t, "onnx", where)):
            try:
                precisions.append(OnnxPrecision(p))
            except ValueError:
                raise v.fail(f"{where}.onnx[{j}]", f"{p!r} is not one of "
                             f"{', '.join(x.value for x in OnnxPrecision)}") from None
        if rt is Runtime.ONNXRUNTIME and not precisions:
            raise v.fail(f"{where}.onnx", "onnxruntime needs the ONNX precisions it runs (fp32, fp16, int4)")
        runtimes.append(RuntimeSupport(rt, v.enum(t, "backend", where, Backend), tuple(precisions),
                                       v.string(t, "note", where, required=False)))

    software = top.get("software", {})
    if not isinstance(software, dict) or not all(isinstance(x, str) for x in software.values()):
        raise v.fail("software", "expected a table of strings (jetpack = \"6.2\", cuda = \"12.6\")")

    return Profile(
        name=name,
        display_name=v.string(top, "display_name", ""),
        device_class=v.enum(top, "device_class", "", DeviceClass),
        memory_kind=v.enum(top, "memory_kind", "", MemoryKind),
        memory_gb=total,
        usable_memory_gb=usable,
        compute=compute,
        power_modes=tuple(modes),
        default_mode=default_mode,
        runtimes=tuple(runtimes),
        software=dict(software),
        detect_model=v.strings(top, "detect_model", ""),
        notes=v.string(top, "notes", "", required=False),
        origin=origin,
        path=file,
        read_curve=v.curve(mem, "read_curve", "memory"),
        kernels=v.kernels(top, "kernels"),
    )
