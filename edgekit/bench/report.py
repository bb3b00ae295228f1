"""``edgekit bench report``: PNG plots and a markdown summary of one or more results files.

Several files (devices, dates) are compared side by side: a *series* is one run at one
thread count, labelled "device date (N threads)"; rows are artifacts, matched by file
name (the sha256 tells whether it really is the same artifact; a mismatch is flagged).
matplotlib is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import DependencyError, InputError
from edgekit.fsutil import atomic_output, ensure_writable_dir, write_text_atomic
from edgekit.ui import sig3, signed_pct

from .results import BenchResult, BenchResults

MIB = 2**20


@dataclass(frozen=True)
class Series:
    run: BenchResults
    threads: int
    label: str
    profile: str | None = None  # a run spanning several profiles (`edgekit fleet bench`): this one's results

    def results(self) -> dict[str, BenchResult]:
        return {r.artifact: r for r in self.run.results if r.threads == self.threads
                and (self.profile is None or r.conditions.get("profile") == self.profile)}


def series_of(runs: Sequence[BenchResults]) -> list[Series]:
    """One series per run and thread count; a run whose results name several profiles in their
    conditions (a fleet's merged file) gives one series per profile and thread count."""
    triples: list[tuple[BenchResults, int, str | None]] = []
    for run in runs:
        profiles = list(dict.fromkeys(r.conditions.get("profile") for r in run.results))
        split = len(profiles) > 1
        for t in dict.fromkeys(r.threads for r in run.results):
            triples += [(run, t, p if split else None) for p in (profiles if split else [None])
                        if any(r.threads == t and (not split or r.conditions.get("profile") == p) for r in run.results)]
    labels = [f"{run.label if p is None else f'{p} {run.created[:10]}'} ({t}t)" for run, t, p in triples]
    # two runs of one device on one day: tell them apart by their file names
    return [Series(run, t, label if labels.count(label) == 1 else f"{label} [{Path(run.source).stem or i}]", p)
            for i, ((run, t, p), label) in enumerate(zip(triples, labels, strict=True))]


def _artifacts(series: Sequence[Series]) -> list[str]:
    names: dict[str, None] = {}
    for s in series:
        for name in s.results():
            names.setdefault(name, None)
    return list(names)


def _mean(r: BenchResult | None, metric: str) -> tuple[float, float] | None:
    m = (r.metrics.get(metric) if r else None) or {}
    return (float(m["mean"]), float(m["std"])) if m.get("n") else None


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise DependencyError("matplotlib", "the plots of `edgekit bench report`", 'pip install "edgekit[bench]"') from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig: Any, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_speed(series: Sequence[Series], names: Sequence[str], path: Path) -> Path:
    """Grouped bars: prompt and generation tokens/s per artifact, one bar per device/run."""
    import numpy as np

    plt = _pyplot()
    metrics = [(s.run.settings.pp_name, s.run.settings.tg_name) for s in series]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 4), 4.8))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for ax, which, title in ((axes[0], 0, "prompt processing"), (axes[1], 1, "generation")):
        for i, s in enumerate(series):
            res = s.results()
            vals = [_mean(res.get(n), metrics[i][which]) for n in names]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [v[0] if v else 0 for v in vals], width,
                   yerr=[v[1] if v else 0 for v in vals], capsize=3, label=s.label)
        names_used = sorted({m[which] for m in metrics})
        ax.set_title(f"{title} ({', '.join(names_used)})")
        ax.set_ylabel("tokens/s")
        ax.set_xticks(x, [n.replace(".gguf", "") for n in names], rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle("tokens/s per artifact and device (mean ± std over repetitions)")
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=1, fontsize=8)
    path = _save_fig(fig, path)
    plt.close(fig)
    return path


def plot_memory_quality(series: Sequence[Series], path: Path) -> Path:
    """Peak RSS against quality (mean KL vs the source model, from each artifact's verification)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    plotted = 0
    for s in series:
        pts = [(r.memory.get("peak_rss_bytes") or r.size_bytes, r.quality["mean_kl"], r.quant)
               for r in s.results().values() if r.quality and r.quality.get("mean_kl") is not None]
        if not pts:
            continue
        xs = [p[0] / MIB for p in pts]
        ys = [max(float(p[1]), 1e-9) for p in pts]  # log axis: a lossless artifact sits at the floor
        ax.scatter(xs, ys, label=s.label, s=40)
        for xv, yv, q in zip(xs, ys, (p[2] for p in pts), strict=True):
            ax.annotate(q, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        plotted += len(pts)
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no quality figures in these results:\nbenchmark an edgekit output directory\n"
                "(its manifest holds each artifact's verification)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("peak RSS (MiB)")
    ax.set_ylabel("mean KL divergence vs source (nats)")
    ax.set_title("memory vs quality")
    ax.grid(alpha=0.3)
    path = _save_fig(fig, path)
    plt.close(fig)
    return path


def _cell(r: BenchResult | None, metric: str) -> str:
    m = _mean(r, metric)
    return f"{m[0]:.1f} ± {m[1]:.1f}" if m else "-"


def summary_markdown(runs: Sequence[BenchResults], series: Sequence[Series], names: Sequence[str],
                     images: Sequence[Path]) -> str:
    lines = ["# edgekit bench report", "", "## Runs", "",
             "| run | device | power mode | runtime versions | edgekit | settings | status | file |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        h, st = run.host, run.settings
        libs = h.get("libraries", {})
        versions = ", ".join(f"{k} {libs[k]}" for k in ("llama_cpp_python", "onnxruntime", "onnxruntime_genai")
                             if k in libs)
        lines.append(f"| {run.label} | {h.get('device_model') or h.get('cpu_model')} ({h.get('cores')} cores) | "
                     f"{h.get('power', {}).get('mode')} | {versions} | {run.edgekit_version} | "
                     f"{st.pp_name}/{st.tg_name}, {st.repetitions} reps, threads {','.join(map(str, st.threads))}, "
                     f"{st.device} | {run.status} | {Path(run.source).name if run.source else ''} |")
    lines += ["", "## Tokens/s (mean ± std)", ""]
    head = ["artifact", "quant"]
    for s in series:
        head += [f"{s.label} {s.run.settings.pp_name}", f"{s.label} {s.run.settings.tg_name}"]
    if len(series) > 1:
        head.append(f"tg ratio vs {series[0].label}")
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in names:
        per = [s.results().get(name) for s in series]
        first = next((r for r in per if r), None)
        shas = {r.sha256 for r in per if r}
        row = [name + (" (different files!)" if len(shas) > 1 else ""), first.quant if first else "?"]
        for s, r in zip(series, per, strict=True):
            row += [_cell(r, s.run.settings.pp_name), _cell(r, s.run.settings.tg_name)]
        if len(series) > 1:
            base = _mean(per[0], series[0].run.settings.tg_name)
            ratios = [(_mean(r, s.run.settings.tg_name) or (0.0, 0.0))[0] / base[0] if base and base[0] else None
                      for s, r in zip(series[1:], per[1:], strict=True)]
            row.append(", ".join("-" if x is None else f"{x:.2f}x" for x in ratios))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Memory, power and quality", "",
              "| series | artifact | peak RSS MiB | GPU MiB | gen W | J/token | mean KL | ppl Δ | reps | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in series:
        for r in s.results().values():
            q, p, mem = r.quality or {}, r.power or {}, r.memory
            lines.append(
                f"| {s.label} | {r.artifact} | {_num((mem.get('peak_rss_bytes') or 0) / MIB)} | "
                f"{_num((mem.get('gpu_memory_bytes') or 0) / MIB)} | {_num(p.get('gen_w'))} | "
                f"{_num(p.get('gen_j_per_token'))} | {_fmt(sig3, q.get('mean_kl'))} | "
                f"{_fmt(signed_pct, q.get('ppl_delta_pct'))} | "
                f"{len(r.repetitions)} | {r.status}{': ' + r.error if r.error else ''} |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    lines += ["", "Metric names follow llama-bench: ppN = prompt of N tokens from an empty context, tgN = N decode "
              "steps (end-of-generation ignored); each artifact measured in a fresh process.", ""]
    return "\n".join(lines)


def _fmt(fmt: Callable[[float], str], v: Any) -> str:
    """Quality figures as every edgekit table prints them (edgekit.ui)."""
    return "-" if v is None else fmt(float(v))


def _num(v: Any) -> str:
    if v is None or v == 0:
        return "-"
    v = float(v)
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def write_report(runs: Sequence[BenchResults], out_dir: Path) -> list[Path]:
    """Write ``tokens_per_s.png``, ``memory_vs_quality.png`` and ``summary.md`` into ``out_dir``."""
    if not runs:
        raise InputError("no results files given", hint="pass files written by `edgekit bench -o FILE`")
    series = series_of(runs)
    names = _artifacts(series)
    if not names:
        raise InputError("the results files hold no measured artifact", hint="run `edgekit bench` first")
    out_dir = ensure_writable_dir(Path(out_dir))
    images = [plot_speed(series, names, out_dir / "tokens_per_s.png"),
              plot_memory_quality(series, out_dir / "memory_vs_quality.png")]
    summary = out_dir / "summary.md"
    write_text_atomic(summary, summary_markdown(runs, series, names, images))
    return [*images, summary]
