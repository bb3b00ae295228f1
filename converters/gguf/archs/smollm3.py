"""SmolLM3: Llama's layout, every fourth layer without RoPE (``no_rope_layers``).

llama.cpp's SMOLLM3 hard-codes that pattern (``n_no_rope_layer_step = 4``); a config whose
``no_rope_layers`` differs would convert "fine" and run differently, so it is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekit.errors import InputError

from .base import ArchSpec, TextConfig

if TYPE_CHECKING:
    import gguf

LLAMA_CPP_NO_ROPE_STEP = 4


@dataclass(frozen=True)
class SmolLM3Spec(ArchSpec):
    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_hparams(w, c)
        expected = [int((i + 1) % LLAMA_CPP_NO_ROPE_STEP != 0) for i in range(c.num_layers)]
        if [int(x) for x in c.raw["no_rope_layers"]] != expected:
            raise InputError("SmolLM3 no_rope_layers do not follow the every-4th-layer pattern llama.cpp assumes",
                             hint="this checkpoint cannot run in llama.cpp as is")
        if c.raw.get("use_sliding_window"):
            raise InputError("SmolLM3 config enables use_sliding_window, which llama.cpp's SMOLLM3 does not implement")


SPEC = SmolLM3Spec(
    name="smollm3",
    hf_architectures=("SmolLM3ForCausalLM",),
    gguf_arch="SMOLLM3",
    permute_qk=True,
    required=("no_rope_layers",),
)
