"""``edgekit convert --to gptq``: calibrated GPTQ int4/int8 checkpoint, verified and compared with RTN.

Steps: validate everything (bits, group size vs every Linear's width, calibration text long
enough) before anything is written; load the source in float32 (merging a LoRA adapter);
run GPTQ (llmcompressor, layer by layer); pack the classic GPTQ checkpoint into a
temporary directory; read it back from disk and check the packing round-trips exactly;
verify the read-back model against transformers on the probe set; measure held-out
perplexity and KL for GPTQ and for round-to-nearest with the same scales; rename into
place and record both in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InputError, QualityGateError, VerificationError
from edgekit.fsutil import artifact_digest, atomic_output_dir
from edgekit.manifest import ArtifactEntry
from edgekit.progress import ProgressFn, StepTimer, report

from ..gguf.quants import Precision
from ..lora import LoraAdapter
from ..pipeline import Conversion, Inputs, Verifier, open_inputs, record, slug, start_output
from ..quality import QualitySettings
from ..reference import torch_logits
from ..source import SourceModel
from .calibration import (
    DEFAULT_SAMPLES,
    DEFAULT_SEQ_LEN,
    calibration_windows,
    check_window,
    read_calibration_text,
)
from .checkpoint import (
    GPTQCheckpoint,
    checkpoint_name,
    copy_side_files,
    float_model_from,
    pack_all,
    scheme_name,
    write_checkpoint,
)
from .engine import (
    DEFAULT_ACT_ORDER,
    DEFAULT_GROUP_SIZE,
    GPTQSettings,
    check_variant,
    float_linears,
    kept_float,
    linearize_experts,
    quantized_linear_names,
    quiet_llmcompressor,
    require_llmcompressor,
    run_gptq,
)
from .pack import check_bits, check_group_value, unpack_linear, unpack_rows
from .rtn import QuantizedLinear, rtn_quantize

log = logging.getLogger(__name__)

PRECISION = {4: Precision.INT4, 8: Precision.INT8}


@dataclass(frozen=True)
class GPTQQuant:
    name: str  # what --quant accepts for GPTQ (another way to say --bits)


QUANTS = (GPTQQuant("int4"), GPTQQuant("int8"))
_LINEAR_WEIGHT = re.compile(r"^(?P<mod>.*\.layers\.\d+\..+)\.weight$")
# a mixture of experts' router ([experts, hidden]): no Linear in transformers, never quantized
_ROUTERS = (".mlp.gate.weight", ".block_sparse_moe.gate.weight")


def gain_line(extra: dict[str, Any]) -> str:
    g, r, f = extra["gptq"], extra["rtn"], extra["fp32"]
    return (f"GPTQ vs round-to-nearest ({extra['scheme']}) on {g['n_tokens']} held-out tokens: "
            f"mean KL {g['mean_kl']:.4g} vs {r['mean_kl']:.4g} ({extra['gain']['kl_reduction_pct']:.1f}% lower), "
            f"ppl {g['ppl']:.3f} vs {r['ppl']:.3f} (fp32 {f['ppl']:.3f})")


def resolve_bits(quants: str | list[str] | None, bits: int) -> int:
    """``-q int4`` / ``-q int8`` may name the width instead of ``--bits``."""
    names = [q.strip().lower() for q in (quants.split(",") if isinstance(quants, str) else quants or []) if q.strip()]
    if not names:
        return bits
    if len(names) == 1 and names[0].removeprefix("int").isdigit():
        check_bits(int(names[0].removeprefix("int")))  # "GPTQ supports 4 or 8 bits, not 3"
    if len(names) != 1 or names[0].removeprefix("int") not in ("4", "8"):
        raise InputError(f"GPTQ output types are int4 or int8, not {','.join(names)!r}",
                         hint="use --bits 4 / bits=4 or --bits 8 / bits=8 (and drop -q / quants=)")
    named = int(names[0].removeprefix("int"))
    if named != bits and bits != 4:  # 4 is the default: only an explicit other width conflicts
        raise InputError(f"--quant / quants= int{named} and --bits / bits={bits} disagree", hint="pass one of them")
    return named


def check_group_size(source: SourceModel, group_size: int, bits: int, keep: tuple[str, ...] = ()) -> None:
    """Every quantized Linear needs in % group == 0 and (for packing) in, out % (32/bits) == 0."""
    check_group_value(group_size)
    per_word = 32 // bits
    bad: list[str] = []
    widths: list[int] = []
    for info in source.iter_infos():
        m = _LINEAR_WEIGHT.match(info.name)
        if not m or len(info.shape) != 2 or info.name.endswith(_ROUTERS) or kept_float(m.group("mod"), keep):
            continue
        out_f, in_f = info.shape
        widths.append(in_f)
        if (group_size > 0 and in_f % group_size) or in_f % per_word or out_f % per_word:
            bad.append(f"{m.group('mod')} (in {in_f}, out {out_f})")
    if bad:
        g = 0
        for w in widths:
            g = np.gcd(g, w)
        fit = max((p for p in (128, 64, 32, 16, 8) if g % p == 0), default=None)
        hint = (f"use --group-size {fit} / group_size={fit} (divides every width), or -1 (one group per row)"
                if fit else "use --group-size -1 / group_size=-1 (one group per row), or keep this model in GGUF")
        raise InputError(f"{len(bad)} layers have widths that are not a multiple of the group size {group_size}"
                         f" (or of {per_word} for {bits}-bit packing): {', '.join(bad[:4])}"
                         f"{' ...' if len(bad) > 4 else ''}", hint=hint)


def _load_float_model(model_dir: Path, adapter: LoraAdapter | None) -> Any:
    """The source in float32 (LoRA merged by edgekit's own merge)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..layerwise import reference_attention

    # eager attention where SDPA would skip soft-capping (Gemma 2): calibrated on the real model
    attn = reference_attention(AutoConfig.from_pretrained(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **attn)
    if adapter is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in adapter.target_tensors:
                p = params[name]
                p.copy_(torch.from_numpy(adapter.merge(name, p.detach().numpy().copy())))
    # NaN/inf weights (a diverged fine-tune, a broken merge) would turn their rows' scales into
    # NaN after the whole GPTQ run: refuse them now, naming the tensors
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise InputError(f"the source model holds NaN/inf values in {len(bad)} tensor(s): {', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}",
                         hint="check the checkpoint (a diverged fine-tune or a broken merge?); it cannot be quantized")
    model.eval()
    return model


# llmcompressor's linearized experts (converters/gptq/engine.py linearize_experts)
_LINEAR_EXPERT = re.compile(r"(?P<layer>.*\.)mlp\.experts\.(?P<e>\d+)\.(?P<m>gate_proj|up_proj|down_proj)")
_EXPERT_MATRICES = ("gate_proj", "up_proj", "down_proj")  # the order of MoeSpec.expert_names


def _stored_module(inputs: Inputs, module: str) -> str:
    """A quantized module's name in the source checkpoint's layout (a linearized expert's hub name)."""
    from ..gguf.archs import spec_for

    m = _LINEAR_EXPERT.fullmatch(module)
    spec = spec_for(inputs.source.config)
    hub = getattr(spec, "hub_expert", None)
    if m is None or hub is None:
        return module
    name = str(hub(m.group("layer"), int(m.group("e")), _EXPERT_MATRICES.index(m.group("m"))))
    return name.removesuffix(".weight") if inputs.source.has(name) else module


def _stored_tensor(inputs: Inputs, name: str) -> str:
    """A float tensor's name as the source stores it (Mixtral's router: block_sparse_moe.gate)."""
    from ..gguf.archs import spec_for

    return next((n for n in spec_for(inputs.source.config).checkpoint_names(name) if inputs.source.has(n)), name)


def _float_tensors(model: Any, quantized_names: list[str]) -> dict[str, np.ndarray]:
    """Everything the GPTQ checkpoint keeps in float: embeddings, norms, biases, an untied head."""
    skip = {f"{n}.weight" for n in quantized_names}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()
            if k not in skip and not (tied and k == "lm_head.weight")}


def check_roundtrip(ckpt: GPTQCheckpoint, quantized: dict[str, QuantizedLinear], label: str) -> None:
    """Codes, zeros, scales, g_idx and dequantized weights read from disk == the in-memory result."""
    if set(ckpt.quantized) != set(quantized):
        raise VerificationError(label, "packing", f"{len(ckpt.quantized)} quantized tensors on disk, "
                                                  f"{len(quantized)} in memory")
    for name, q in quantized.items():
        u = unpack_linear(ckpt.quantized[name])
        same = (np.array_equal(u.codes, q.codes) and np.array_equal(u.zeros, q.zeros)
                and np.array_equal(u.scales, q.scales) and np.array_equal(u.g_idx, q.g_idx)
                and np.array_equal(ckpt.dequantized_one(name), q.dequantize()))
        if not same:
            raise VerificationError(label, "packing", f"{name} does not read back as it was quantized")


def check_compressed_tensors(path: Path, quantized: dict[str, QuantizedLinear], label: str) -> None:
    """llmcompressor's own pack-quantized tensors hold the same codes and scales as ours."""
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    for name, q in quantized.items():
        packed, scale = tensors.get(f"{name}.weight_packed"), tensors.get(f"{name}.weight_scale")
        if packed is None or scale is None:
            raise VerificationError(label, "packing", f"{name}.weight_packed/weight_scale missing")
        codes = unpack_rows(np.ascontiguousarray(packed.T), q.bits).T
        if not (np.array_equal(codes, q.codes) and np.array_equal(scale.astype(np.float16), q.scales)):
            raise VerificationError(label, "packing", f"{name}: compressed-tensors codes differ from GPTQ's")


def convert_gptq(
    model_dir: Path,
    out_dir: Path,
    quants: str | list[str] | None = None,
    *,
    adapter_dir: Path | None = None,
    verify_artifacts: bool = True,
    name: str | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    timer: StepTimer | None = None,
    prepared: Inputs | None = None,
    bits: int = 4,
    group_size: int = DEFAULT_GROUP_SIZE,
    act_order: bool = DEFAULT_ACT_ORDER,
    calibration: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    compressed_tensors: bool = False,
    heldout_text: str | None = None,
    quality: QualitySettings | None = None,
) -> Conversion:
    """Quantize with GPTQ, write a classic GPTQ checkpoint directory, verify it, compare with RTN."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    bits = check_bits(resolve_bits(quants, bits))
    timer = timer or StepTimer()
    if threads:
        import torch

        torch.set_num_threads(threads)

    # Everything that can be wrong with the input is found before anything is written.
    inputs = open_inputs(model_dir, adapter_dir, timer, prepared, quality, fmt="gptq")
    check_variant(inputs.source.config)
    settings = GPTQSettings(bits=bits, group_size=group_size, act_order=act_order,
                            float_linears=float_linears(inputs.source.config))
    with timer.step("check gptq inputs"):
        check_group_size(inputs.source, group_size, bits, settings.float_linears)
        check_window(samples, seq_len, inputs.source.config.get("max_position_embeddings"))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # chat JSONL renders through its template
        text, text_source = read_calibration_text(calibration, tokenizer)
        require_llmcompressor()
    with timer.step("calibration text"):
        calib = calibration_windows(tokenizer, text, text_source, samples, seq_len)
        del text
    report(progress, "calibration", f"{samples} x {seq_len} tokens from {text_source} "
                                     f"({calib.available_tokens} tokens available)")

    result = start_output(out_dir, inputs, timer)
    stem = slug(name or model_dir.resolve().name)
    scheme = scheme_name(bits, group_size)
    final = out_dir / checkpoint_name(stem, bits, group_size)
    ct_final = out_dir / f"{final.name}-compressed-tensors"
    t0 = time.perf_counter()
    entries: list[ArtifactEntry] = []
    verifier = Verifier(inputs, result, progress, threads)
    try:
        with contextlib.ExitStack() as stack:
            with timer.step("load model"):
                report(progress, "load", "source model in float32" + (" + LoRA merge" if inputs.adapter else ""))
                model = _load_float_model(model_dir, inputs.adapter)
                linearize_experts(model)  # a MoE's 3-D experts as Linears (nothing for a dense model)
            float_tensors = _float_tensors(model, quantized_linear_names(model, settings.float_linears))
            with timer.step("gptq"):
                report(progress, "gptq", f"{scheme}, act-order {'on' if act_order else 'off'}, llmcompressor")
                quantized = run_gptq(model, calib.windows, settings, progress)
            base_extra: dict[str, Any] = {"scheme": scheme, "bits": bits, "group_size": group_size, "sym": True,
                                          "act_order": act_order, "calibration": calib.describe()}
            if compressed_tensors:
                ct_tmp = stack.enter_context(atomic_output_dir(ct_final))
                with timer.step("write compressed-tensors"):
                    _write_compressed_tensors(model, ct_tmp, model_dir, progress)
                    check_compressed_tensors(ct_tmp, quantized, ct_final.name)
                size, digest = artifact_digest(ct_tmp)
                entries.append(ArtifactEntry(file=ct_final.name, format="compressed-tensors", quant=scheme,
                                             precision=PRECISION[bits].value, size_bytes=size, sha256=digest,
                                             verification=None, extra={"same_codes_as": final.name, **base_extra}))
            del model  # GPTQ's in-memory model is not needed any more: bound peak memory
            # the checkpoint names every tensor as the source stores it (GPTQ loaders read the hub's
            # layout: Mixtral's experts as block_sparse_moe.experts.E.w1/w3/w2, not the linearized names)
            quantized = {_stored_module(inputs, n): q for n, q in quantized.items()}
            float_tensors = {_stored_tensor(inputs, n): v for n, v in float_tensors.items()}

            tmp = stack.enter_context(atomic_output_dir(final))
            with timer.step("write gptq"):
                report(progress, "write", final.name)
                write_checkpoint(tmp, model_dir, inputs.source.config, float_tensors, pack_all(quantized), settings)
            with timer.step("read back"):
                ckpt = GPTQCheckpoint(tmp)
                check_roundtrip(ckpt, quantized, final.name)
            verification, extra = None, dict(base_extra)
            if verify_artifacts:
                verification, metrics = _verify_and_compare(ckpt, tmp, verifier, settings,
                                                            final.name, scheme, heldout_text, progress)
                extra.update(metrics)
            size, digest = artifact_digest(tmp)
            entries.insert(0, ArtifactEntry(file=final.name, format="gptq", quant=scheme, precision=PRECISION[bits].value,
                                            size_bytes=size, sha256=digest, verification=verification,
                                            seconds=round(time.perf_counter() - t0, 3), extra=extra))
    except QualityGateError as gated:  # nothing of it was kept; the other formats of the run go on
        verifier.refuse(gated, scheme)
        return result
    for e in entries:  # both directories are renamed now: the manifest never lists a missing one
        record(result, e)
    return result


def _write_compressed_tensors(model: Any, out: Path, model_dir: Path, progress: ProgressFn | None) -> None:
    """llmcompressor's own format (``pack-quantized``), for vLLM / compressed-tensors users."""
    import torch

    model.to(torch.float16)  # the scales are float16 values already: exact
    with quiet_llmcompressor(progress):
        model.save_pretrained(out, save_compressed=True)
    copy_side_files(model_dir, out, replace=False)  # keep what save_pretrained wrote (generation_config)


def _verify_and_compare(ckpt: GPTQCheckpoint, ckpt_dir: Path, verifier: Verifier, settings: GPTQSettings,
                        label: str, scheme: str, heldout_text: str | None,
                        progress: ProgressFn | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Correctness and quality of the read-back checkpoint, then GPTQ vs RTN on the same evaluation text."""
    from transformers import AutoTokenizer

    from ..artifact_weights import ArtifactTensor, ArtifactWeights
    from ..quality import make_windows, score_artifact

    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)  # the checkpoint's own copy of the tokenizer

    def tokenize(text: str, add_special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])

    gs = settings.group_size if settings.group_size > 0 else 0
    stored = f"int{settings.bits}/g{settings.group_size}"
    bits = settings.bits + (16 / gs if gs else 0.0)  # fp16 scale per group
    weights = ArtifactWeights(tuple(f"{p}.weight" for p in ckpt.quantized),
                              lambda n: ArtifactTensor.whole(n, ckpt.dequantized_one(n.removesuffix(".weight")), stored, bits))
    gptq_model = ckpt.float_model()
    verification = verifier.check(label, f"gptq-{scheme}", PRECISION[settings.bits], tokenize,
                                  partial(torch_logits, gptq_model), _model_score(gptq_model), weights)
    ref = verifier.reference
    windows, scores = ref.windows, ref.scores
    if heldout_text is not None:  # another text than the run's evaluation set (cross-domain studies)
        head = ref.encode("", True)
        windows = make_windows(ref.encode(heldout_text, False), head, n_ctx=ref.windows.first_scored * 2,
                               eval_tokens=ref.eval_settings.tokens, source="given held-out text")
        scores = ref.scores_on(windows)
    with verifier.result.timer.step("held-out gptq vs rtn"):
        report(progress, "held-out", f"GPTQ vs round-to-nearest vs fp32 on {windows.n_scored} tokens")
        gptq = score_artifact(scores, windows, _model_score(gptq_model)) if heldout_text is not None else None
        del gptq_model
        rtn_model = _rtn_model(verifier.inputs.source, verifier.inputs.adapter, ckpt, settings)
        rtn = score_artifact(scores, windows, _model_score(rtn_model))
        del rtn_model

    def brief(m: Any) -> dict[str, Any]:
        return {"ppl": round(m.ppl, 4), "mean_kl": float(f"{m.mean_kl:.6g}"), "top1": round(m.top1, 6),
                "n_tokens": m.n_positions}

    g = brief(gptq) if gptq is not None else {k: verification[k] for k in ("ppl", "mean_kl", "top1")} | {
        "n_tokens": verification["n_positions"]}
    r = brief(rtn)
    gain = {"kl_reduction_pct": round((r["mean_kl"] - g["mean_kl"]) / max(r["mean_kl"], 1e-30) * 100, 2),
            "ppl_delta_vs_rtn": round(g["ppl"] - r["ppl"], 4)}
    fp32 = {"ppl": round(rtn.ppl_ref, 4), "mean_kl": 0.0, "top1": 1.0, "n_tokens": rtn.n_positions}
    metrics = {"gptq": g, "rtn": r, "fp32": fp32, "gain": gain, "eval_set": windows.describe()}
    report(progress, "gptq vs rtn", gain_line(metrics | {"scheme": scheme}))
    return verification, metrics


def _model_score(model: Any) -> Any:
    """A ScoreFn over a transformers model: logits of the scored positions only."""
    import torch

    def score(ids: list[int], start: int) -> Iterator[np.ndarray]:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], dtype=torch.long), logits_to_keep=len(ids) - start)
        yield out.logits[0].float().numpy()

    return score


def _rtn_model(source: SourceModel, adapter: LoraAdapter | None, ckpt: GPTQCheckpoint, settings: GPTQSettings) -> Any:
    """The GPTQ checkpoint with every quantized Linear rounded to nearest on the same scheme instead.

    The Linears come from the source tensors (LoRA merged); everything else is the
    checkpoint's float tensors (float16 as stored), so only the rounding differs.
    """
    def rtn_weight(prefix: str) -> np.ndarray:
        name = f"{prefix}.weight"
        if not source.has(name):
            raise InputError(f"the source has no tensor {name!r} (transformers names it differently), so the "
                             f"round-to-nearest baseline cannot be built",
                             hint="skip verification and the GPTQ-vs-RTN comparison with --no-verify / "
                                  "verify=False")
        w = source.float32(name)
        if adapter is not None:
            w = adapter.merge(name, w)
        gs = settings.group_size if settings.group_size > 0 else w.shape[1]
        return rtn_quantize(w, settings.bits, gs).dequantize()

    return float_model_from(source.path, ckpt.config, ckpt.dequantized(rtn_weight))
