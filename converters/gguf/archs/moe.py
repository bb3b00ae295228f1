"""Mixture-of-experts feed-forwards (Qwen3-MoE, Mixtral): what the two families share.

Each MoE layer has a router (``mlp.gate``, ``[E, hidden]``: llama.cpp's ``ffn_gate_inp``) and E
experts, each a SwiGLU MLP. llama.cpp wants each kind of expert matrix stacked into one 3-D tensor
per layer: ``ffn_gate_exps`` / ``ffn_up_exps`` ``[E, ff, hidden]`` and ``ffn_down_exps``
``[E, hidden, ff]`` (numpy order). Checkpoints come in two layouts, both read:

- **hub** (every published checkpoint, and what transformers 5's ``save_pretrained`` writes back):
  one matrix per expert, ``mlp.experts.{e}.gate_proj/up_proj/down_proj`` (Mixtral:
  ``block_sparse_moe.experts.{e}.w1/w3/w2`` and ``block_sparse_moe.gate``);
- **fused** (what transformers 5 holds in memory, saved as such by tools that skip its
  conversion): ``mlp.experts.gate_up_proj`` ``[E, 2*ff, hidden]`` (each expert's gate rows, then
  its up rows) and ``mlp.experts.down_proj`` ``[E, hidden, ff]``.

Both become the same three stacks through :class:`~.base.Composite` (the writer streams each
expert's rows from the file; nothing is stacked in memory). Verification loads the file's stacks
back into transformers' fused parameters (:meth:`checkpoint_parts` tells the reference which hub
matrices make each fused parameter). The profiler's layout (:meth:`hf_tensors`) is the in-memory
one, as for every family.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError

from .base import ArchSpec, Composite, ExpertLayout, Piece, TextConfig

if TYPE_CHECKING:
    import gguf

_FUSED = re.compile(r"(.*)\.mlp\.experts\.(gate_up_proj|down_proj)")


@dataclass(frozen=True)
class MoeSpec(ArchSpec):
    # the hub layout's names: the block holding router and experts, and each expert's gate, up, down
    moe_block: str = "mlp"
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # config.json's expert count, under either name (transformers 5 saves Qwen3-MoE's as num_local_experts)
    n_experts_keys: tuple[str, ...] = ("num_experts", "num_local_experts")
    expert_ff_key: str = "moe_intermediate_size"  # one expert's width (Mixtral: intermediate_size)
    write_expert_ff: bool = True  # expert_feed_forward_length (llama.cpp's qwen3moe reads it; LLAMA does not)

    # -- the layout ---------------------------------------------------------------------------
    def n_experts(self, c: TextConfig) -> int:
        return int(next(c.raw[k] for k in self.n_experts_keys if c.raw.get(k) is not None))

    def expert_ff(self, c: TextConfig) -> int:
        return int(c.raw[self.expert_ff_key])

    def experts(self, c: TextConfig) -> ExpertLayout:
        return ExpertLayout(n_experts=self.n_experts(c), n_active=int(c.raw["num_experts_per_tok"]),
                            expert_ff=self.expert_ff(c))

    def hf_ffn_tensors(self, prefix: str, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        e, h, ff = self.n_experts(c), c.hidden_size, self.expert_ff(c)
        yield prefix + "mlp.gate.weight", (e, h)
        yield prefix + "mlp.experts.gate_up_proj", (e, 2 * ff, h)
        yield prefix + "mlp.experts.down_proj", (e, h, ff)

    def hub_tensors(self, c: TextConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
        """The hub checkpoint's tensors (one matrix per expert, the family's own names): what a
        published checkpoint holds, where :meth:`hf_tensors` is transformers 5's in-memory layout."""
        n, h, ff = self.n_experts(c), c.hidden_size, self.expert_ff(c)
        for name, shape in self.hf_tensors(c):
            m = _FUSED.fullmatch(name)
            if m is None:
                yield (name.replace(".mlp.gate.", f".{self.moe_block}.gate."), shape) if name.endswith(
                    ".mlp.gate.weight") else (name, shape)
                continue
            prefix = m.group(1) + "."
            for e in range(n):
                if m.group(2) == "gate_up_proj":
                    yield self.hub_expert(prefix, e, 0), (ff, h)
                    yield self.hub_expert(prefix, e, 1), (ff, h)
                else:
                    yield self.hub_expert(prefix, e, 2), (h, ff)

    def hub_expert(self, layer_prefix: str, e: int, which: int) -> str:
        """The hub layout's name of expert ``e``'s matrix ``which`` (0 gate, 1 up, 2 down)."""
        return f"{layer_prefix}{self.moe_block}.experts.{e}.{self.expert_names[which]}.weight"

    def composites(self, shapes: dict[str, tuple[int, ...]], c: TextConfig) -> list[Composite]:
        n, h, ff = self.n_experts(c), c.hidden_size, self.expert_ff(c)
        out: list[Composite] = []
        for i in range(c.num_layers):
            p, blk = f"model.layers.{i}.", f"blk.{i}."
            fused = p + "mlp.experts.gate_up_proj"
            if fused in shapes:  # [E, 2*ff, h]: expert e's gate rows, then its up rows
                two = 2 * ff
                gate = tuple(Piece(fused, e * two, e * two + ff) for e in range(n))
                up = tuple(Piece(fused, e * two + ff, (e + 1) * two) for e in range(n))
                down: tuple[Piece, ...] = (Piece(p + "mlp.experts.down_proj", 0, n * h),)
            else:  # one matrix per expert
                gate = tuple(Piece(self.hub_expert(p, e, 0), 0, ff) for e in range(n))
                up = tuple(Piece(self.hub_expert(p, e, 1), 0, ff) for e in range(n))
                down = tuple(Piece(self.hub_expert(p, e, 2), 0, h) for e in range(n))
            out += [Composite(blk + "ffn_gate_exps.weight", (n, ff, h), gate),
                    Composite(blk + "ffn_up_exps.weight", (n, ff, h), up),
                    Composite(blk + "ffn_down_exps.weight", (n, h, ff), down)]
        return out

    def checkpoint_parts(self, model_name: str, has: Callable[[str], bool]) -> tuple[str, ...]:
        """transformers' fused ``gate_up_proj`` from the hub's per-expert gate and up matrices (expert
        by expert: gate rows then up rows), ``down_proj`` from the per-expert down matrices."""
        m = _FUSED.fullmatch(model_name)
        if m is None:
            return ()
        prefix, which = m.group(1) + ".", (0, 1) if m.group(2) == "gate_up_proj" else (2,)
        parts: list[str] = []
        e = 0
        while has(self.hub_expert(prefix, e, which[0])):
            parts += [self.hub_expert(prefix, e, w) for w in which]
            e += 1
        return tuple(parts)

    def checkpoint_names(self, model_name: str) -> list[str]:
        names = super().checkpoint_names(model_name)
        if self.moe_block != "mlp" and ".mlp.gate." in model_name:  # Mixtral's hub router
            names.append(model_name.replace(".mlp.gate.", f".{self.moe_block}.gate."))
        return names

    # -- the GGUF ------------------------------------------------------------------------------
    def check_config(self, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        c = TextConfig.from_hf(cfg)
        if not any(c.raw.get(k) is not None for k in self.n_experts_keys):
            raise InputError(f"config.json lacks {self.n_experts_keys[0]!r}, which {self.name} needs",
                             hint="pass the model's complete config.json (as saved by save_pretrained)")
        n, k = self.n_experts(c), int(c.raw["num_experts_per_tok"])
        if not 0 < k <= n:
            raise InputError(f"config.json's num_experts_per_tok {k} is not between 1 and the {n} experts",
                             hint="pass the model's own config.json")

    def write_hparams(self, w: gguf.GGUFWriter, c: TextConfig) -> None:
        super().write_hparams(w, c)
        w.add_expert_count(self.n_experts(c))
        w.add_expert_used_count(int(c.raw["num_experts_per_tok"]))
        if self.write_expert_ff:
            w.add_expert_feed_forward_length(self.expert_ff(c))
