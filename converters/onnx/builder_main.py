"""Child-process entry point: ONNX Runtime GenAI's model builder, with config fixes.

onnxruntime-genai 0.18's builder reads some settings in the transformers 4 layout. Under
transformers 5, Gemma 3 nests its RoPE settings per layer type
(``rope_parameters = {"full_attention": ..., "sliding_attention": ...}``) and the builder
fails with ``KeyError: 'rope_type'``. Each fix below restores the layout the builder
reads, from the values transformers itself loaded; verification against transformers
still has the last word on every export. (Plain ``rope_theta`` moved into
``rope_parameters`` too, but the builder already reads that correctly: checked with a
theta of 1e6, whose cos/sin caches match.)
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable
from typing import Any


def _nested_rope_per_layer_type(config: Any) -> None:
    # Gemma 3: {"full_attention": {...}, "sliding_attention": {...}} -> the flat global
    # parameters plus rope_local_base_freq, the attribute the builder's Gemma3Model reads.
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "full_attention" in rp and "rope_type" not in rp:
        config.rope_local_base_freq = rp["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rp["full_attention"])


# applied in this order to every config the builder loads
CONFIG_FIXES: tuple[Callable[[Any], None], ...] = (_nested_rope_per_layer_type,)


def _install() -> None:
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained.__func__  # type: ignore[attr-defined]

    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        config = original(cls, *args, **kwargs)
        for fix in CONFIG_FIXES:
            fix(getattr(config, "text_config", None) or config)
        return config

    AutoConfig.from_pretrained = classmethod(from_pretrained)  # type: ignore[assignment,method-assign]


if __name__ == "__main__":
    _install()
    sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
