"""What the per-family test modules share: saving a tiny random model beside its tokenizer,
one transformers reference per module, and the parity every conversion of a family must show."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekit.converters.quality import QualitySettings


def save_with_tokenizer(model: Any, tokenizer_dir: Path, out: Path) -> Path:
    """``model.save_pretrained(out)`` plus the tokenizer files the conversion reads."""
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def shared_inputs(model_dir: Path, quality: QualitySettings) -> Any:
    """One transformers reference shared by a module's conversions of ``model_dir``."""
    from edgekit.converters.pipeline import open_inputs
    from edgekit.progress import StepTimer

    return open_inputs(model_dir, None, StepTimer(), quality=quality)


def verified_by_quant(res: Any) -> dict[str, tuple[Any, Any]]:
    """quant -> (artifact, report) of a conversion, each verified with the source's tokens; at f16
    the parity f16 activation rounding alone leaves (the same on every x86 CPU: relative error
    ~1e-3, KL ~1e-6), where the families' broken conversions give O(0.1) and more."""
    by_quant = {a.quant: (a, rep) for a, rep in zip(res.artifacts, res.reports, strict=True)}
    for quant, (_, rep) in by_quant.items():
        assert rep.passed, (quant, rep.failures)
        assert rep.token_mismatches == []
    if "f16" in by_quant:
        f16 = by_quant["f16"][1].metrics
        assert f16 is not None and f16.rel_err < 0.05 and f16.mean_kl < 1e-3
    return by_quant


def llama_allocations(path: Path, caplog: Any, **params: Any) -> str:
    """llama.cpp's log of creating a context for the GGUF at ``path`` with these
    llama_context_params fields (its ``llama_kv_cache: size = ...`` and ``llama_memory_recurrent:
    ...`` lines say what it allocated); ``caplog`` is pytest's fixture."""
    import logging

    import llama_cpp

    from edgekit.runtimes.llama_env import route_llama_logs

    route_llama_logs()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="edgekit.llama_cpp")
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    assert model
    try:
        cp = llama_cpp.llama_context_default_params()
        for key, value in params.items():
            setattr(cp, key, value)
        ctx = llama_cpp.llama_init_from_model(model, cp)
        assert ctx
        llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(model)
    return "\n".join(r.getMessage() for r in caplog.records)
