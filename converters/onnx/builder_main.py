"""Child-process entry point: ONNX Runtime GenAI's model builder, with config fixes.

onnxruntime-genai 0.18's builder reads some settings in the transformers 4 layout. Under
transformers 5, Gemma 3 nests its RoPE settings per layer type
(``rope_parameters = {"full_attention": ..., "sliding_attention": ...}``) and the builder
fails with ``KeyError: 'rope_type'``; Phi-3's LongRoPE keys and SmolLM3's no-RoPE layers need
the same kind of help. Each fix below restores the layout the builder
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


def _transformers4_rope_keys(config: Any) -> None:
    # Phi-3 LongRoPE: the builder reads rope_parameters["type"] (transformers 4's key, now
    # "rope_type") and config.partial_rotary_factor (now inside rope_parameters).
    rp = getattr(config, "rope_parameters", None)
    if not isinstance(rp, dict):
        return
    if "rope_type" in rp and "type" not in rp:
        rp["type"] = rp["rope_type"]
    if "partial_rotary_factor" in rp and getattr(config, "partial_rotary_factor", None) is None:
        config.partial_rotary_factor = rp["partial_rotary_factor"]


# applied in this order to every config the builder loads
CONFIG_FIXES: tuple[Callable[[Any], None], ...] = (_nested_rope_per_layer_type, _transformers4_rope_keys)


def _smollm3_no_rope_layers() -> None:
    # SmolLM3's builder turns RoPE off on its no-RoPE layers by clearing use_rope_in_attn only;
    # where RoPE is fused into attention (CPU) that sends the layer down the separate-rotary
    # path, which needs the position_ids input the fused graph dropped (KeyError). Clearing
    # "rope" for those layers is what the builder means; verification checks the graph.
    import onnxruntime_genai.models  # noqa: F401 -- puts its directory on sys.path: the builder imports "builders"
    from builders.smollm import SmolLM3Model  # the module object builder.py uses

    original = SmolLM3Model.make_attention

    def make_attention(self: Any, layer_id: int, attention: Any, root_input: Any, **kwargs: Any) -> Any:
        rope = self.attention_attrs["rope"]
        self.attention_attrs["rope"] = rope and bool(self.no_rope_layers[layer_id])
        try:
            return original(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = rope

    SmolLM3Model.make_attention = make_attention


def _install() -> None:
    from transformers import AutoConfig

    _smollm3_no_rope_layers()

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
