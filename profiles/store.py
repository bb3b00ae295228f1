"""Where profiles live: shipped ones in ``profiles/data/``, calibrated ones in the user's edgekit dir.

Both are the same TOML format and go through the same validator. A calibrated profile with
the name of a shipped one replaces it in listings (the measurement is the better figure).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

from edgekit._compat import tomllib
from edgekit.errors import InputError

from .schema import Figure, Origin, Profile, ProfileFormatError, parse_profile

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"


class UnknownProfileError(InputError):
    def __init__(self, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
        hint = (f"did you mean {close[0]!r}? " if close else "") + f"known profiles: {', '.join(known)}"
        super().__init__(f"unknown hardware profile {name!r}", hint=hint)
        self.name, self.known, self.suggestion = name, known, close[0] if close else None


def edgekit_home() -> Path:
    """$EDGEKIT_HOME, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    if env := os.environ.get("EDGEKIT_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgekit"


def user_profile_dir() -> Path:
    return edgekit_home() / "profiles"


def load_profile_file(path: Path, origin: Origin = Origin.SHIPPED) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileFormatError(str(path), "(file)", f"not valid TOML: {e}") from e
    except OSError as e:
        raise InputError(f"cannot read profile {path}: {e.strerror}") from e
    profile = parse_profile(data, str(path), origin=origin)
    if profile.name != path.stem:
        raise ProfileFormatError(str(path), "name", f"{profile.name!r} differs from the file name {path.stem!r}")
    return profile


def shipped_profiles() -> dict[str, Profile]:
    return {p.stem: load_profile_file(p) for p in sorted(DATA_DIR.glob("*.toml"))}


def user_profiles() -> dict[str, Profile]:
    d = user_profile_dir()
    return {p.stem: load_profile_file(p, Origin.CALIBRATED) for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def all_profiles() -> dict[str, Profile]:
    return {**shipped_profiles(), **user_profiles()}


def get_profile(name: str) -> Profile:
    profiles = all_profiles()
    if name in profiles:
        return profiles[name]
    lowered = {k.lower(): k for k in profiles}
    if name.lower() in lowered:
        return profiles[lowered[name.lower()]]
    raise UnknownProfileError(name, sorted(profiles))


def save_profile(profile: Profile) -> Path:
    from edgekit.fsutil import ensure_writable_dir, write_text_atomic

    directory = ensure_writable_dir(user_profile_dir())
    path = directory / f"{profile.name}.toml"
    text = dump_toml(profile)
    parse_profile(tomllib.loads(text), str(path), origin=Origin.CALIBRATED)  # never write what we cannot read
    write_text_atomic(path, text)
    log.info("saved profile %s to %s", profile.name, path)
    return path


# -- serialisation ------------------------------------------------------------------------

def profile_to_dict(p: Profile) -> dict[str, Any]:
    """The file layout (plus origin/path), for --json and for writing TOML."""
    c = p.compute
    compute: dict[str, Any] = {"cpu_model": c.cpu_model, "cpu_cores": c.cpu_cores.to_dict(), "isa": list(c.isa)}
    for key in ("cpu_gflops", "gpu_fp16_tflops", "gpu_int8_tops"):
        fig: Figure | None = getattr(c, key)
        if fig is not None:
            compute[key] = fig.to_dict()
    if c.gpu_name:
        compute["gpu_name"] = c.gpu_name
    if c.cuda_cc:
        compute["cuda_cc"] = c.cuda_cc
    modes = []
    for m in p.power_modes:
        md: dict[str, Any] = {"name": m.name, "bandwidth_gbs": m.bandwidth_gbs.to_dict()}
        if m.power_w:
            md["power_w"] = m.power_w.to_dict()
        if m.emc_mhz:
            md["emc_mhz"] = m.emc_mhz.to_dict()
        if m.note:
            md["note"] = m.note
        modes.append(md)
    runtimes = []
    for r in p.runtimes:
        rd: dict[str, Any] = {"runtime": r.runtime.value, "backend": r.backend.value}
        if r.onnx:
            rd["onnx"] = [x.value for x in r.onnx]
        if r.note:
            rd["note"] = r.note
        runtimes.append(rd)
    d: dict[str, Any] = {
        "name": p.name, "display_name": p.display_name, "device_class": p.device_class.value,
        "memory_kind": p.memory_kind.value, "default_mode": p.default_mode,
    }
    if p.detect_model:
        d["detect_model"] = list(p.detect_model)
    if p.notes:
        d["notes"] = p.notes
    d["memory"] = {"total_gb": p.memory_gb.to_dict(), "usable_gb": p.usable_memory_gb.to_dict()}
    if p.read_curve is not None:
        d["memory"]["read_curve"] = p.read_curve.to_dict()
    d["compute"] = compute
    if p.software:
        d["software"] = dict(p.software)
    d["power_modes"] = modes
    d["runtimes"] = runtimes
    if p.kernels is not None:
        d["kernels"] = p.kernels.to_dict()
    return d


def dump_toml(p: Profile) -> str:
    """The profile as TOML text that :func:`load_profile_file` reads back."""
    header = "# Written by `edgekit profile calibrate`; edit freely, the schema is checked on load.\n\n"
    return header + dict_to_toml(profile_to_dict(p))


def dict_to_toml(d: dict[str, Any]) -> str:
    """A minimal TOML writer for exactly the profile layout (stdlib reads TOML but cannot write it)."""
    lines = []
    for key, val in d.items():
        if not isinstance(val, dict | list) or (isinstance(val, list) and all(isinstance(x, str) for x in val)):
            lines.append(f"{key} = {_toml_value(val)}")
    for key in ("memory", "compute", "software"):
        if isinstance(d.get(key), dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[key].items()]
    for key in ("power_modes", "runtimes"):
        for entry in d.get(key, []):
            lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    if isinstance(d.get("kernels"), dict):  # [kernels] scalars, then one line per type
        k = d["kernels"]
        lines += ["", "[kernels]"] + [f"{n} = {_toml_value(v)}" for n, v in k.items() if n != "types"]
        lines += ["", "[kernels.types]"] + [f"{n} = {_toml_value(v)}" for n, v in k.get("types", {}).items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
