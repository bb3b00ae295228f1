"""`edgekit profile list|show|detect|calibrate`: hardware profiles and this host."""

from __future__ import annotations

from typing import Any

import click

from edgekit.ui import emit_json, format_table


def _fig(f: Any) -> str:
    if f is None:
        return "-"
    value = f"{f.value:g}"
    return f"{value} ({f.source.value}{': ' + f.ref if f.ref else ''})"


def _summary_row(p: Any) -> list[Any]:
    mode = p.mode()
    return [p.name, p.device_class.value, p.memory_gb.value, p.usable_memory_gb.value, mode.bandwidth_gbs.value,
            ",".join(m.name for m in p.power_modes), ",".join(f"{r.runtime.value}/{r.backend.value}" for r in p.runtimes),
            p.origin.value]


def _print_profile(p: Any) -> None:
    c = p.compute
    click.echo(f"{p.display_name}  [{p.name}, {p.origin.value}{', ' + p.path if p.path else ''}]")
    lines = [
        ("class", f"{p.device_class.value}, {p.memory_kind.value} memory"),
        ("memory GiB", _fig(p.memory_gb)),
        ("usable GiB", _fig(p.usable_memory_gb)),
        ("CPU", f"{c.cpu_model}; cores {_fig(c.cpu_cores)}"),
        ("ISA", ", ".join(c.isa) or "-"),
        ("CPU GFLOP/s", _fig(c.cpu_gflops)),
        ("GPU", c.gpu_name or "-"),
        ("GPU fp16 TFLOPS", _fig(c.gpu_fp16_tflops)),
        ("GPU INT8 TOPS", _fig(c.gpu_int8_tops)),
        ("CUDA CC", c.cuda_cc or "-"),
        ("software", ", ".join(f"{k} {v}" for k, v in p.software.items()) or "-"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"  {k:<{width}}  {v}")
    click.echo("\nPower modes (bandwidth GB/s):")
    rows = [[m.name + (" (default)" if m.name == p.default_mode else ""), m.bandwidth_gbs.value,
             m.bandwidth_gbs.source.value, m.power_w.value if m.power_w else None, m.bandwidth_gbs.ref or m.note]
            for m in p.power_modes]
    click.echo(format_table(["mode", "GB/s", "source", "watts", "ref"], rows))
    click.echo("\nRuntimes:")
    rows = [[r.runtime.value, r.backend.value, ",".join(x.value for x in r.onnx) or "gguf", r.note] for r in p.runtimes]
    click.echo(format_table(["runtime", "backend", "formats", "note"], rows))
    if p.kernels is not None:
        k = p.kernels
        click.echo(f"\nllama.cpp kernels ({k.source.value}, {k.threads} thread(s)"
                   f"{f', {k.layer_us:g} us per layer' if k.layer_us is not None else ''}): {k.ref}")
        rows = [[t, " ".join(f"{mib:g}:{gbs:g}" for mib, gbs in r.decode), r.prompt_gflops] for t, r in k.types.items()]
        click.echo(format_table(["type", "decode MiB:GB/s", "prompt GFLOP/s"], rows))
    if p.notes:
        click.echo(f"\n{p.notes}")


@click.group("profile")
def profile() -> None:
    """Hardware profiles: list, show, detect this host, or calibrate it."""


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List shipped and calibrated profiles."""
    from edgekit.profiles.store import all_profiles, profile_to_dict

    profiles = all_profiles()
    if as_json:
        emit_json([{**profile_to_dict(p), "origin": p.origin.value, "path": p.path} for p in profiles.values()])
        return
    headers = ["name", "class", "memory GiB", "usable GiB", "GB/s (default mode)", "power modes", "runtimes", "origin"]
    click.echo(format_table(headers, [_summary_row(p) for p in profiles.values()]))


@profile.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile with the source of every figure."""
    from edgekit.profiles.store import get_profile, profile_to_dict

    p = get_profile(name)
    if as_json:
        emit_json({**profile_to_dict(p), "origin": p.origin.value, "path": p.path})
    else:
        _print_profile(p)


@profile.command("detect")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-nvml", is_flag=True, help="Do not query NVIDIA GPUs through NVML.")
def detect_cmd(as_json: bool, no_nvml: bool) -> None:
    """Build a profile of this host (CPU, ISA, memory, NVIDIA GPU, Jetson board and power mode)."""
    from edgekit.profiles.detect import detect_host
    from edgekit.profiles.store import profile_to_dict

    p = detect_host(use_nvml=not no_nvml)
    if as_json:
        emit_json({**profile_to_dict(p), "origin": p.origin.value})
    else:
        _print_profile(p)


@profile.command("calibrate")
@click.option("--name", default="host", show_default=True, help="Name to store the calibrated profile under.")
@click.option("--seconds", default=4.0, show_default=True, type=click.FloatRange(1.0, 120.0),
              help="Time budget for the bandwidth and matmul measurements.")
@click.option("--kernels/--no-kernels", default=True, show_default=True,
              help="Also time llama.cpp's kernel for each weight type (about 5 s a type).")
@click.option("--kernel-types", default=None,
              help="Comma-separated ggml types to time (default: all, F16 ... IQ1_S).")
@click.option("--quick", is_flag=True, help="Time two kernel types at two sizes only (seconds, for tests).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Threads for every measurement (default: all usable cores; match how you will run).")
@click.option("--no-save", is_flag=True, help="Measure and print only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def calibrate_cmd(name: str, seconds: float, kernels: bool, kernel_types: str | None, quick: bool,
                  threads: int | None, no_save: bool, as_json: bool) -> None:
    """Measure this host's memory bandwidth, matmul rate and llama.cpp kernels; store a calibrated profile."""
    import os

    if threads is not None:  # numpy's BLAS reads these when it loads (the matmul measurement)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    from edgekit.profiles.calibrate import calibrated_profile, measure
    from edgekit.profiles.detect import detect_host, usable_cores
    from edgekit.profiles.kernels import measure_kernels, quick_settings
    from edgekit.profiles.store import profile_to_dict, save_profile

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    say(f"- measuring memory bandwidth and matmul rate (~{seconds:g} s)")
    cal = measure(seconds, threads=threads)
    table = None
    if kernels:
        opts = quick_settings() if quick else {}
        if kernel_types:
            opts["types"] = [t.strip().upper() for t in kernel_types.split(",") if t.strip()]
        table = measure_kernels(threads=threads or usable_cores(), progress=lambda t: say(f"- timing {t} kernels"),
                                **opts)
    p = calibrated_profile(detect_host(name=name), cal, table)
    path = None if no_save else save_profile(p)
    if as_json:
        emit_json({"measurements": cal.to_dict(), "kernels": table.to_dict() if table else None,
                   "saved_to": str(path) if path else None, "profile": profile_to_dict(p)})
        return
    rows = [["memory bandwidth (stored: best read)", round(cal.bandwidth_gbs, 2), "GB/s"],
            ["memory read (all threads)", round(cal.read_gbs, 2), "GB/s"],
            ["memory read (1 thread)", round(cal.read_1t_gbs, 2), "GB/s"],
            ["memory copy (read+write)", round(cal.copy_gbs, 2), "GB/s"],
            ["matmul fp32", round(cal.matmul_gflops, 1), "GFLOP/s"]]
    click.echo(format_table(["measurement", "value", "unit"], rows))
    click.echo(f"({cal.threads} threads, {cal.array_mib} MiB array, {cal.seconds:.1f} s)")
    if table is not None:
        sizes = [mib for mib, _ in next(iter(table.types.values())).decode]
        krows = [[t, *(gbs for _, gbs in r.decode), r.prompt_gflops] for t, r in table.types.items()]
        heads = ["type", *(f"decode GB/s (point {i + 1})" for i in range(len(sizes))), "prompt GFLOP/s"]
        click.echo("")
        click.echo(format_table(heads, krows))
        click.echo(f"(llama.cpp, {table.threads} thread(s); decode points are working sets from "
                   f"{min(m for r in table.types.values() for m, _ in r.decode):.1f} to "
                   f"{max(m for r in table.types.values() for m, _ in r.decode):.0f} MiB)")
    if path:
        click.echo(f"saved profile {p.name!r} to {path}; use it with: edgekit recommend MODEL --profile {p.name}")
