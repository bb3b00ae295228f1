"""Where each parameter of a transformers model is in the checkpoint on disk.

Usually under its own name (or, tied, the name the source stores). A parameter transformers holds
whole where the checkpoint stores parts -- transformers 5's fused expert stacks from a hub
checkpoint's per-expert matrices (:meth:`~.gguf.archs.ArchSpec.checkpoint_parts`) -- is assembled
from its parts, one part in memory at a time beside it. Used by the verification reference and
the importance matrix, which both load the source layer by layer in its own dtype.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import InputError

if TYPE_CHECKING:
    from .source import SourceModel


def torch_dtype(source: SourceModel) -> Any:
    """The dtype the source's matrices are stored in (norms are often kept in float32 beside them)."""
    import torch

    tags = {source.info(n).dtype for n in source.names() if len(source.info(n).shape) >= 2}
    if tags == {"BF16"}:
        return torch.bfloat16
    if tags == {"F16"}:
        return torch.float16
    return torch.float32


def rows_of(shape: tuple[int, ...]) -> int:
    """Rows of a tensor as parts are counted: the last axis's values, the leading axes flattened."""
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def checkpoint_layout(lm: Any, source: SourceModel, spec: Any) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Where each model parameter (canonical name) is in the checkpoint: the name it is stored
    under (tied weights: the one the source stores), and for those stored in parts (transformers
    5's fused experts from per-expert matrices) the parts in order, checked against its shape."""
    groups: dict[str, list[str]] = {}
    for name, canon in lm.aliases.items():
        groups.setdefault(canon, []).append(name)
    stored = {canon: next((c for n in names for c in spec.checkpoint_names(n) if source.has(c)), canon)
              for canon, names in groups.items()}
    parts: dict[str, tuple[str, ...]] = {}
    for canon, name in stored.items():
        if source.has(name):
            continue
        got = tuple(spec.checkpoint_parts(canon, source.has))
        if not got:
            continue
        shape = tuple(lm.param(canon).shape)
        shapes = [source.info(p).shape for p in got]
        if any(s[-1] != shape[-1] for s in shapes) or sum(rows_of(s) for s in shapes) != rows_of(shape):
            raise InputError(f"the checkpoint's parts of {canon} ({got[0]}, ... {len(got)} tensors) do not make its "
                             f"shape {list(shape)}", hint="the checkpoint's expert tensors do not match its "
                                                          "config.json (num_experts / expert width / hidden_size)")
        parts[canon] = got
    return stored, parts


def stored_tensor(source: SourceModel, stored: str) -> Any:
    """A checkpoint tensor as stored (bf16 stays bf16), read into its own buffer."""
    import torch

    raw = source.file_of(stored).raw(stored)
    if source.info(stored).dtype == "BF16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.require(raw, requirements=["W"]))


def read_param(source: SourceModel, lm: Any, canon: str, stored: dict[str, str],
               parts: dict[str, tuple[str, ...]]) -> Any:
    """A model parameter from the checkpoint as stored (see :func:`checkpoint_layout`)."""
    import torch

    if canon not in parts:
        return stored_tensor(source, stored[canon])
    shape = tuple(lm.param(canon).shape)
    out: Any = None
    pos = 0
    for p in parts[canon]:  # one part read at a time beside the assembled parameter
        t = stored_tensor(source, p)
        if out is None:
            out = torch.empty(shape, dtype=t.dtype).view(-1, shape[-1])
        n = rows_of(tuple(t.shape))
        out[pos:pos + n] = t.reshape(n, shape[-1])
        pos += n
    return out.view(shape)
