"""Run GPTQ with llmcompressor and hand back integer codes on numpy.

llmcompressor's ``oneshot`` with a ``GPTQModifier`` runs the sequential pipeline: one
decoder layer at a time is calibrated (Hessian of its inputs over the calibration windows),
quantized column by column, and its quantized output feeds the next layer -- so only one
layer's activations are held, and later layers see the error of earlier ones.

Settings that matter for the exported checkpoint (why they are set the way they are):

* symmetric int, group strategy, ``memoryless_minmax`` observer: the classic GPTQ scheme
  (``sym: true``) every GPTQ kernel runs (exllama, marlin, ORT MatMulNBits);
* ``scale_dtype: float16``: scales are rounded to float16 *before* GPTQ rounds weights
  against them, so the float16 scales in the checkpoint reproduce the in-memory quantized
  weights exactly (otherwise they would differ by float16 rounding);
* ``actorder``: ``--act-order`` selects llmcompressor's ``weight`` (a.k.a. static) order --
  columns are processed in order of decreasing Hessian diagonal while groups keep their
  contiguous columns, so the checkpoint stays ``desc_act: false`` with a trivial ``g_idx``
  (no runtime cost, every kernel reads it). The old ``group``/``desc_act`` order was
  removed from llmcompressor (compressed-tensors 0.19).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import DependencyError, EdgekitError, InputError, UnsupportedArchitectureError
from edgekit.progress import ProgressFn, duration_text, report, time_left

from .rtn import QuantizedLinear, on_grid

log = logging.getLogger(__name__)

INSTALL = 'pip install "edgekit[gptq]"  (or: pip install llmcompressor==0.14.0.1 torch==2.13.0 transformers==5.17.0)'
IGNORE = ["lm_head"]  # the output head stays float, as in every GPTQ checkpoint
# Linears a family's GPTQ practice keeps in float (full-match regexes on module names), by spec name.
# Qwen3.5's gated delta-net: llmcompressor's own Qwen3.5 / Qwen3-Next recipes ignore "re:.*linear_attn.*"
# (the decay and beta gates in_proj_a/in_proj_b are one row per value head, too narrow for int4 packing,
# and vLLM's Qwen3.5 loaders expect the delta-net unquantized); its full attention and MLPs are quantized.
FLOAT_LINEARS: dict[str, tuple[str, ...]] = {"qwen35": (r".*\.linear_attn\..*",)}
# Variants of a GPTQ family edgekit refuses, by spec name: (config -> refused?, why). Granite 4's experts
# are fused 3-D parameters in the hub checkpoint (block_sparse_moe.input_linear [E, 2*ff, h]); llmcompressor
# linearizes and quantizes them, but a GPTQ checkpoint has no per-expert layout edgekit can write for them
# that transformers reads back, and the router (router.layer, one row per expert) is a Linear too.
GPTQ_REFUSED: dict[str, tuple[Callable[[dict[str, Any]], bool], str]] = {
    "granite4": (lambda cfg: bool(cfg.get("num_local_experts")),
                 "Granite 4 with experts (granite-4.0-h-tiny/-small) cannot be converted to gptq: edgekit's GPTQ "
                 "checkpoint has no layout for its fused experts (block_sparse_moe.input_linear/output_linear) yet"),
}
# Defaults chosen on benchmarks/gptq_domains.py (GPTQ vs RTN, calibrated on one text domain and scored
# on others, on the demo model and on Gemma 3 270M).
# Fraction of the mean Hessian diagonal added before inversion. Gemma 3 270M calibrated on 16 x 256 code
# tokens, scored on prose: KL 0.311 at 0.1 vs 0.368 at 0.01 (act-order on: 0.247 vs 0.275); the demo model
# with 48 x 512 windows loses 2-3% out of domain at 0.1. A small or narrow calibration is where GPTQ
# overfits, so the default leans to 0.1 (GPTQ paper and llmcompressor: 0.01).
DAMPENING = 0.1
DEFAULT_GROUP_SIZE = 128  # input columns per scale
# Columns in order of decreasing Hessian diagonal, groups kept contiguous (no runtime cost): mean KL
# 25% lower on Gemma 3 270M and 8-15% lower on the demo model, in every calibration/eval domain pair.
DEFAULT_ACT_ORDER = True
# what extract() checks holds for the llmcompressor edgekit is tested with; another version may differ
_VERSION_HINT = f"edgekit is tested with llmcompressor 0.14.0.1; install that version: {INSTALL}"


@dataclass(frozen=True)
class GPTQSettings:
    bits: int = 4
    group_size: int = DEFAULT_GROUP_SIZE  # -1: one group per row (per-channel)
    act_order: bool = DEFAULT_ACT_ORDER
    dampening: float = DAMPENING
    float_linears: tuple[str, ...] = ()  # module-name regexes left in float (FLOAT_LINEARS)

    def weights_args(self) -> dict[str, Any]:
        grouped = self.group_size > 0
        return {"num_bits": self.bits, "type": "int", "symmetric": True,
                "strategy": "group" if grouped else "channel",
                **({"group_size": self.group_size} if grouped else {}),
                "scale_dtype": "float16"}


def require_llmcompressor() -> None:
    """Fail early when llmcompressor is missing. Looked up, not imported: importing it logs a
    device warning to stderr (through loguru) before quiet_llmcompressor can route it."""
    import importlib.util

    if importlib.util.find_spec("llmcompressor") is None:
        raise DependencyError("llmcompressor", "GPTQ quantization", INSTALL)


_QUANTIZING = re.compile(r"Quantizing \d+ module\(s\): \[(.*)\]")


@contextlib.contextmanager
def quiet_llmcompressor(progress: ProgressFn | None, total: int = 0, names: list[str] | None = None
                        ) -> Iterator[None]:
    """Route llmcompressor's loguru output to logging (and progress), its tqdm bars to the log.

    llmcompressor prints to stdout at import and during runs; library code here must not
    (the CLI's ``--json`` owns stdout). ``total`` modules to quantize (``names``: which) make
    a progress counter; its message, with the time left, changes as each layer completes.
    """
    captured = io.StringIO()
    outer_out, outer_err = sys.stdout, sys.stderr  # where progress goes (the CLI prints it on stderr)
    with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
        # first import prints (device warning) through a sink bound to the current stdout
        from llmcompressor.logger import LoggerConfig, configure_logger
        from loguru import logger as loguru_logger

    configure_logger(LoggerConfig(console_log_level=None))  # drops llmcompressor's stdout sink
    done = [0]
    started = time.monotonic()
    per_layer = Counter(_layer_of(n) for n in names or [])  # modules still to do, per layer
    n_layers = len(per_layer)
    status = [""]  # the counter's message: the last completed layer and the time left
    lc_log = logging.getLogger("llmcompressor")
    for line in captured.getvalue().splitlines():  # the import's device warning: shown with -v
        lc_log.info("%s", line)
    captured.seek(0)
    captured.truncate()

    def sink(message: Any) -> None:
        record = message.record
        text = str(record["message"])
        # warnings that matter (e.g. a Hessian that fell back to RTN) surface; the rest is debug
        loud = record["level"].no >= 30 and record["level"].name != "METRIC" and "accelerator" not in text
        lc_log.log(logging.WARNING if loud else logging.DEBUG, "%s", text)
        m = _QUANTIZING.match(text)
        if m and total:
            # The sequential pipeline quantizes each layer's modules right after calibrating that
            # layer, and layers cost about the same: modules done so far give the time left.
            modules = [x.strip().strip("'\"") for x in m.group(1).split(",")]
            done[0] += len(modules)
            n, elapsed = min(done[0], total), time.monotonic() - started
            finished = []
            for name in modules:
                layer = _layer_of(name)
                if per_layer.get(layer):
                    per_layer[layer] -= 1
                    if per_layer[layer] == 0:
                        finished.append(layer)
            if finished or not n_layers:
                layers_done = n_layers - sum(1 for v in per_layer.values() if v)
                left = time_left(elapsed, n, total)
                what = f"layer {layers_done}/{n_layers}" if n_layers else f"{n}/{total} modules"
                status[0] = f"{what} in {duration_text(elapsed)}" + (f", {left}" if left else "")
            # the run's output is captured; a progress printer must reach the real streams
            with contextlib.redirect_stdout(outer_out), contextlib.redirect_stderr(outer_err):
                report(progress, "gptq", status[0], done=n, total=total)

    handler = loguru_logger.add(sink, level="DEBUG")
    fx_log = logging.getLogger("torch.fx._symbolic_trace")  # a deprecation note per traced layer
    fx_level = fx_log.level
    fx_log.setLevel(logging.ERROR)
    old_tok = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # silences a datasets/tokenizers fork warning
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            yield
    finally:
        loguru_logger.remove(handler)
        fx_log.setLevel(fx_level)
        if old_tok is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old_tok
        if captured.getvalue().strip():
            log.debug("llmcompressor output:\n%s", captured.getvalue()[-4000:])


def _layer_of(module: str) -> str:
    """The decoder layer a module belongs to: its name up to the first numeric part."""
    parts = module.split(".")
    i = next((k for k, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
    return ".".join(parts[:i + 1])


def linearize_experts(model: Any) -> None:
    """A mixture of experts' experts as one Linear per expert matrix, so GPTQ (Linear by Linear)
    quantizes them: transformers 5 holds them as 3-D parameters (``mlp.experts.gate_up_proj``);
    llmcompressor's ``linearize_moe`` swaps in modules named as the hub's per-expert layout
    (``mlp.experts.{e}.gate_proj``, what GPTQ loaders read), and its ``oneshot`` then runs every
    expert on every calibration token (``moe_calibrate_all_experts``, its default), so no expert
    is quantized without statistics. The router (``mlp.gate``) is no Linear and stays float.
    Nothing changes in a dense model."""
    require_llmcompressor()
    with quiet_llmcompressor(None):
        from llmcompressor.modeling.moe.linearize import get_non_linearized_moes, linearize_moe

        if get_non_linearized_moes(model):
            linearize_moe(model)


def float_linears(config: dict[str, Any]) -> tuple[str, ...]:
    """The Linears this architecture's GPTQ practice keeps in float (FLOAT_LINEARS)."""
    from ..gguf.archs import spec_for

    return FLOAT_LINEARS.get(spec_for(config).name, ())


def check_variant(config: dict[str, Any]) -> None:
    """Refuse a variant of a GPTQ family edgekit cannot write (GPTQ_REFUSED), in one line."""
    from ..gguf.archs import spec_for

    name = spec_for(config).name
    refused = GPTQ_REFUSED.get(name)
    if refused is not None and refused[0](config):
        err = UnsupportedArchitectureError(name, [])
        err.message, err.hint = refused[1], "convert it to GGUF (--to gguf / to=\"gguf\"); dense Granite 4 converts to gptq"
        raise err


def kept_float(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def quantized_linear_names(model: Any, keep: tuple[str, ...] = ()) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and n.split(".")[-1] not in IGNORE and not kept_float(n, keep)]


def run_gptq(model: Any, windows: list[list[int]], settings: GPTQSettings,
             progress: ProgressFn | None = None) -> dict[str, QuantizedLinear]:
    """Quantize ``model`` (float32, in place) and return each Linear's codes/zeros/scales."""
    require_llmcompressor()
    from datasets import Dataset

    names = quantized_linear_names(model, settings.float_linears)
    seq_len = max(len(w) for w in windows)
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    # No shuffling: the Hessians are float sums whose order changes GPTQ's rounding, so a
    # shuffled run gives a different checkpoint (held-out ppl 21.11-21.33 on the demo model).
    with quiet_llmcompressor(progress, len(names), names):
        # imported in here: llmcompressor's first import prints a device warning to stdout
        from llmcompressor import oneshot
        from llmcompressor.modifiers.gptq import GPTQModifier

        recipe = GPTQModifier(
            ignore=IGNORE + [f"re:{p}" for p in settings.float_linears], dampening_frac=settings.dampening,
            actorder="weight" if settings.act_order else None,
            config_groups={"group_0": {"targets": ["Linear"], "weights": settings.weights_args()}},
        )
        oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=seq_len,
                num_calibration_samples=len(windows), shuffle_calibration_samples=False)
    return extract(model, names, settings)


def extract(model: Any, names: list[str], settings: GPTQSettings) -> dict[str, QuantizedLinear]:
    """Integer codes of the quantized weights, checked to lie exactly on their grid."""
    modules = dict(model.named_modules())
    out: dict[str, QuantizedLinear] = {}
    for name in names:
        m = modules[name]
        scale = getattr(m, "weight_scale", None)
        if scale is None:
            raise EdgekitError(f"llmcompressor left {name} unquantized", hint=_VERSION_HINT)
        w = m.weight.detach().float().cpu().numpy()
        s = scale.detach().float().cpu().numpy().reshape(w.shape[0], -1)
        if not (np.isfinite(w).all() and np.isfinite(s).all()):
            # NaN/inf in the source weights (or activations that overflowed on the calibration
            # text) make every scale of the row NaN: say which layer, not "off the grid"
            raise InputError(f"GPTQ produced non-finite weights for {name}: the source's {name}.weight or its "
                             f"calibration activations hold NaN/inf values",
                             hint="check the source checkpoint (e.g. a failed fine-tune or merge); it cannot be "
                                  "quantized as it is")
        gs = w.shape[1] // s.shape[1]
        g_idx = getattr(m, "weight_g_idx", None)
        g = (g_idx.detach().cpu().numpy().astype(np.int32) if g_idx is not None
             else (np.arange(w.shape[1]) // gs).astype(np.int32))
        try:
            out[name] = on_grid(w, s, g, settings.bits)
        except ValueError as e:  # llmcompressor rounded against other scales than it stored
            raise EdgekitError(f"{name}: {e}", hint=_VERSION_HINT) from e
    return out
