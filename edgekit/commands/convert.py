"""``edgekit convert``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from edgekit.converters.options import CommonOptions, GPTQOptions, ONNXOptions
from edgekit.ui import StepPrinter, artifact_table, emit_json

DEMO_QUANTS = "f16,q8_0,q4_k_m"
# --demo: more types than the defaults (converters.registry.DEFAULT_QUANTS), it is small
DEMO_DEFAULTS = {"gguf": DEMO_QUANTS, "onnx": "fp32,fp16,int4", "gptq": "int4"}


# Defaults shown by --help come from the option records (one place); only the flags a user
# gives are passed on, so the records' own defaults and checks apply, and a flag of a format
# the run does not produce is an error rather than silently ignored.
_C, _O, _Q = CommonOptions, ONNXOptions, GPTQOptions


@click.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("--to", "to", default="gguf", show_default=True,
              help="Output format(s), comma-separated: gguf, onnx, gptq (e.g. --to gguf,onnx or --to gptq,onnx).")
@click.option("--quant", "-q", "quants", default=None,
              help="Comma-separated types, e.g. f16,q8_0,q4_k_m (GGUF), fp32,fp16,int4 (ONNX) or int4|int8 (GPTQ). "
                   "Default: f16 (GGUF), fp32,int4 (ONNX), int4 (GPTQ).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, help="PEFT LoRA adapter dir to merge.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("edgekit-out"),
              show_default=True, help="Output directory.")
@click.option("--name", default=None, help="Base name of the output files (default: the model dir's name).")
@click.option("--pre-tokenizer", default=None,
              help="GGUF: llama.cpp pre-tokenizer name, when it cannot be derived from tokenizer.json.")
@click.option("--imatrix", "imatrix", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="GGUF: give llama.cpp's quantizer an importance matrix: alone, computed from the model on the "
                   "calibration text (written to OUT/imatrix.gguf); with FILE, one made by llama-imatrix (GGUF or "
                   ".dat). Needed by iq3_xxs, iq2_*, iq1_*; lowers the loss of every quantized type.")
@click.option("--tensor-type", "tensor_type", multiple=True, metavar="PATTERN=TYPE",
              help="GGUF: quantize tensors whose name matches the regex PATTERN to TYPE (repeatable, as "
                   "llama-quantize's), e.g. --tensor-type attn_v=q8_0.")
@click.option("--fit-size", "fit_size", default=None, metavar="SIZE",
              help="GGUF: also make the most accurate mix of types per tensor class whose file fits SIZE "
                   "(e.g. 1.2GB, 900MiB); named NAME-fit-SIZE.gguf.")
@click.option("--fit", "fit", default=None, metavar="PROFILE",
              help="GGUF: as --fit-size, with the memory PROFILE leaves for weights after the KV cache (--ctx), "
                   "compute buffers and runtime (edgekit profile list).")
@click.option("--ctx", "fit_ctx", type=int, default=None,
              help="Context the artifact is meant for: --fit keeps room for its KV cache, --ollama writes it as "
                   "num_ctx (default 4096).")
@click.option("--fit-method", "fit_method", type=click.Choice(["kl", "error"]), default="kl", show_default=True,
              help="--fit-size/--fit: price each class's types by measured KL (kl) or imatrix-weighted error (error: "
                   "faster on big models).")
@click.option("--target", default=str(_O.target), show_default=True,
              help="ONNX: where it will run, cpu|cuda|jetson (decides the graph the builder emits).")
@click.option("--block-size", type=int, default=_O.block_size, show_default=True,
              help="ONNX int4/int8: weights per quantization block (16/32/64/128/256).")
@click.option("--int4-algo", default=str(_O.int4_algo), show_default=True,
              help="ONNX int4/int8: rtn|k_quant|k_quant_mixed.")
@click.option("--bits", type=int, default=_Q.bits, show_default=True, help="GPTQ: weight bits (4 or 8).")
@click.option("--group-size", type=int, default=_Q.group_size, show_default=True,
              help="GPTQ: input columns per scale (-1: one group per row).")
@click.option("--act-order/--no-act-order", default=_Q.act_order, show_default=True,
              help="GPTQ: process columns by activation size (better, same format).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="GPTQ and --imatrix: calibration text: .txt/.md/.rst files, a directory of them, or .jsonl with \"text\" "
                   "or chat \"messages\" (rendered through the model's chat template) "
                   "(default: the packaged prose/code/dialogue mix).")
@click.option("--samples", type=int, default=_Q.samples, show_default=True, help="GPTQ and --imatrix: calibration windows.")
@click.option("--seq-len", type=int, default=_Q.seq_len, show_default=True, help="GPTQ and --imatrix: tokens per calibration window.")
@click.option("--compressed-tensors", is_flag=True,
              help="GPTQ: also write llmcompressor's compressed-tensors checkpoint.")
@click.option("--from-gptq", type=click.Path(path_type=Path), default=None,
              help="ONNX: build from this GPTQ checkpoint (its calibrated int4 weights) instead of MODEL_DIR.")
@click.option("--eval-tokens", type=int, default=_C.eval_tokens, show_default=True,
              help="Quality: scored tokens of the evaluation set (fewer: faster, noisier).")
@click.option("--eval-text", type=click.Path(path_type=Path), default=None,
              help="Quality: UTF-8 text to measure on (default: the packaged prose/code/dialogue mix).")
@click.option("--max-kl", type=float, default=None,
              help="Quality gate: refuse (do not write) an artifact whose mean KL vs the source exceeds this.")
@click.option("--max-ppl-increase", type=float, default=None,
              help="Quality gate: refuse an artifact whose perplexity rises by more than this many percent.")
@click.option("--no-verify", is_flag=True, help="Skip verification against the source model (not recommended).")
@click.option("--ollama", is_flag=True,
              help="Also write an Ollama Modelfile beside each GGUF (TEMPLATE, stops; num_ctx from --ctx).")
@click.option("--threads", type=int, default=None, help="Threads for quantization and verification.")
@click.option("--demo", is_flag=True, help="Convert the packaged demo model (no download needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def convert(model_dir: Path | None, to: str, out_dir: Path, demo: bool, as_json: bool, quiet: bool,
            **flags: Any) -> None:
    """Convert MODEL_DIR (a Hugging Face model directory) and verify every artifact against it."""
    from edgekit.converters.gptq.chain import gain_lines
    from edgekit.converters.plan import plan_conversion
    from edgekit.converters.registry import Format, convert_formats
    from edgekit.errors import InputError

    ollama = flags.pop("ollama")
    ctx = click.get_current_context()
    # the flags given, by their keyword names (--no-verify is verify=False)
    given = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if given.pop("no_verify", False):
        given["verify"] = False
    if ollama and "fit_ctx" in given and "fit" not in given:
        given.pop("fit_ctx")  # --ctx for the Modelfile's num_ctx only: no profile budget to size
    if given.get("imatrix") == "":  # --imatrix without a file: compute one
        given["imatrix"] = True
    if "tensor_type" in given:
        given["tensor_type"] = tuple(given["tensor_type"])
    defaults = None
    if demo:
        from edgekit.demo import demo_model_dir

        if model_dir is not None:
            raise InputError("--demo converts the packaged demo model; drop MODEL_DIR or --demo")
        model_dir = demo_model_dir()
        given.setdefault("name", "edgekit-demo")
        # the demo model knows Python docstrings only: measure it on its own held-out docstrings
        from edgekit.demo import heldout_path

        given.setdefault("eval_text", heldout_path())
        defaults = {Format(f): q for f, q in DEMO_DEFAULTS.items()}
    if model_dir is None and isinstance(given.get("imatrix"), str) and Path(given["imatrix"]).is_dir():
        raise InputError(f"--imatrix took {given['imatrix']} as its FILE, and MODEL_DIR is missing",
                         hint="put --imatrix after MODEL_DIR, or write --imatrix=FILE")
    if model_dir is None:
        raise InputError("missing MODEL_DIR", hint="pass a Hugging Face model directory, or --demo")
    plan = plan_conversion(to, defaults=defaults, progress=StepPrinter(quiet=quiet or as_json), **given)
    results = convert_formats(model_dir, out_dir, plan)
    modelfiles = _modelfiles(results, out_dir, flags.get("fit_ctx")) if ollama else []
    refused = [x for r in results for x in r.refused]
    if as_json:
        emit_json({"out_dir": str(out_dir), "manifest": results[-1].manifest.to_dict(), "refused": refused,
                   "warnings": [w for r in results for w in r.warnings],
                   "steps": [s for r in results for s in r.timer.as_dict()],
                   **({"modelfiles": [m.to_dict() for m in modelfiles]} if ollama else {})})
    else:
        click.echo(artifact_table([asdict(a) for r in results for a in r.artifacts]))
        ref = next((a.verification for r in results for a in r.artifacts if a.verification), None)
        if ref:
            ev = ref.get("eval_set") or {}
            click.echo(f"quality vs the source on {ref['n_positions']} evaluation tokens ({ev.get('source', '?')}); "
                       f"source perplexity {ref['ppl_ref']:.3f}; manifest: {out_dir / 'edgekit.json'}")
        for line in gain_lines([a for r in results for a in r.artifacts]):
            click.echo(line)
        for w in (w for r in results for w in r.warnings):
            click.echo(f"warning: {w}")
        for m in modelfiles:
            click.echo(f"ollama: {m.path}" + "".join(f"; {n}" for n in m.notes))
    if refused:
        from edgekit.errors import QualityGateError

        names = ", ".join(f"{x['artifact']} ({'; '.join(x['reasons'])})" for x in refused)
        raise QualityGateError(f"{len(refused)} artifact(s)", [names], {})


def _modelfiles(results: list[Any], out_dir: Path, num_ctx: int | None) -> list[Any]:
    """--ollama: a Modelfile beside every GGUF the run wrote (edgekit.export.ollama)."""
    from edgekit.export import write_modelfile

    return [write_modelfile(out_dir / a.file, num_ctx=num_ctx) for r in results for a in r.artifacts
            if a.format == "gguf"]
