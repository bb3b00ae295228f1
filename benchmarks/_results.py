"""What every benchmark script does last: write its results as JSON, atomically, and say where."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def save_results(results: dict[str, Any], dest: Path) -> Path:
    from edgekit.fsutil import write_json_atomic

    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest, results)
    print(f"\nresults: {dest}")
    return dest


@dataclass
class QualityRun:
    """What the quality benchmarks share: the model, the output folder, one set of inputs (one
    reference pass over the evaluation set for every artifact) and the keywords every convert takes."""

    model: Path
    out: Path
    inputs: Any
    timer: Any
    n_params: int
    common: dict[str, Any]


def quality_run(model: Path | None, gemma: bool, out: Path, eval_tokens: int, threads: int, name: str,
                eval_text: Path | None = None) -> QualityRun:
    """``model`` (default: the demo model; ``gemma``: Gemma 3 270M from prepare_gemma.py) opened once,
    measured on ``eval_text`` (default: the packaged evaluation mix)."""
    from edgekit.converters.pipeline import open_inputs
    from edgekit.converters.quality import EvalSettings, QualitySettings
    from edgekit.demo import demo_model_dir
    from edgekit.progress import StepTimer

    if gemma:
        from prepare_gemma import prepare  # benchmarks/ sibling

        model = prepare()
    model = Path(model or demo_model_dir())
    out.mkdir(parents=True, exist_ok=True)
    timer = StepTimer()
    text = {"text": eval_text.read_text(encoding="utf-8"), "source": str(eval_text)} if eval_text else {}
    inputs = open_inputs(model, None, timer, quality=QualitySettings(EvalSettings(tokens=eval_tokens, **text)))
    n_params = sum(math.prod(i.shape) for i in inputs.source.iter_infos())
    common: dict[str, Any] = {"name": name, "threads": threads, "prepared": inputs, "timer": timer}
    return QualityRun(model, out, inputs, timer, n_params, common)


Point = tuple[float, float, str]  # (bits per weight, mean KL, label)


def kl_vs_bits_plot(series: list[tuple[str, str, list[Point]]], dest: Path, title: str) -> Path | None:
    """Mean KL (log) against bits per weight, one marker per series: the quality benchmarks' plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'edgekit[bench]')")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, marker, pts in series:
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (file size / parameters)")
    ax.set_ylabel("mean KL vs source (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)
    return dest
