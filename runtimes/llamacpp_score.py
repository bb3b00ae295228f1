"""Logits of chosen positions only, from llama.cpp, in bounded memory.

``Llama(logits_all=True)`` keeps an ``n_ctx x n_vocab`` float32 array in Python and llama.cpp
an output buffer of the same size: 6 GB for a 262k vocabulary at n_ctx 6k. Scoring needs
logits only where it scores (the second half of a window) and only one chunk at a time, so
this decodes the window's head without outputs and its scored tail in chunks of
``chunk`` positions, each chunk's logits copied out before the next decode overwrites them.
llama.cpp's output buffer is then ``chunk x n_vocab``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import RuntimeLoadError

if TYPE_CHECKING:
    from .llamacpp import LlamaCppSession

SCORE_CHUNK = 64  # positions per llama_decode with outputs: 64 x 262k x 4 B = 64 MiB at most


def score_positions(session: LlamaCppSession, ids: list[int], start: int,
                    chunk: int = SCORE_CHUNK) -> Iterator[np.ndarray]:
    """Float32 logits of positions ``start..len(ids)-1`` of one sequence, ``chunk`` rows at a time."""
    import llama_cpp
    from llama_cpp._internals import LlamaBatch

    llm = session.llm
    n_batch = int(llm.n_batch)
    if len(ids) > session.context_length:
        raise RuntimeLoadError(f"{len(ids)} tokens do not fit the context of {session.context_length}",
                               hint="open the session with a larger n_ctx")
    ctx = llm._ctx.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    llm.reset()
    n_vocab = int(llm.n_vocab())
    step = min(n_batch, chunk)
    batch = LlamaBatch(n_tokens=max(n_batch, step), embd=0, n_seq_max=1, verbose=False)
    try:
        pos = 0
        while pos < len(ids):
            # the unscored head goes in batches of n_batch, the scored tail in chunks with outputs
            end = min(len(ids), start if pos < start else pos + step, pos + n_batch)
            with_logits = pos >= start
            b = batch.batch
            b.n_tokens = end - pos
            for i, tok in enumerate(ids[pos:end]):
                b.token[i] = tok
                b.pos[i] = pos + i
                b.seq_id[i][0] = 0
                b.n_seq_id[i] = 1
                b.logits[i] = with_logits
            rc = llama_cpp.llama_decode(ctx, b)
            if rc != 0:
                raise RuntimeLoadError(f"llama.cpp could not evaluate the text (llama_decode returned {rc})",
                                       hint="run with -vv to see llama.cpp's log")
            if with_logits:
                rows = end - pos
                ptr = llama_cpp.llama_get_logits(ctx)
                yield np.ctypeslib.as_array(ptr, shape=(rows * n_vocab,)).reshape(rows, n_vocab).copy()
            pos = end
    finally:
        batch.close()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
