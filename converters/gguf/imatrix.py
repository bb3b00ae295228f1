"""Importance matrix (imatrix) for llama.cpp's quantizer, computed from the source model in PyTorch.

llama.cpp's low-bit types choose each block's scale to minimise the *activation-weighted* error
sum_j a_j (w_j - q_j)^2, where a_j is the mean square of input channel j of that matrix over
real text. ``llama-imatrix`` gets a_j by running a GGUF through llama.cpp; edgekit already holds
the source model, so the calibration text (:mod:`..textsets`, as for GPTQ) runs through the
Hugging Face model one decoder layer at a time (:mod:`..layerwise`: memory is the embedding,
the head and one layer), a forward pre-hook on every ``nn.Linear`` of the loaded layer adding
up the squared inputs and the token count. A mixture of experts' stacked matrices
(``ffn_*_exps``) are counted per expert, as ``llama-imatrix`` does: a forward pre-hook on each
experts module adds the squared inputs of the tokens routed to each expert (gate and up share
that input) and of each expert's own down-projection input (recomputed from its gate and up).

The file is llama.cpp's own GGUF imatrix format (``tools/imatrix/imatrix.cpp``), so its tools
read edgekit's file and edgekit reads theirs: ``general.type = "imatrix"``, per matrix a float32
tensor ``<gguf name>.in_sum2`` (ne0 = input channels, ne1 = experts) and ``<gguf name>.counts``
(tokens seen, ne0 = 1, ne1 = experts), keys ``imatrix.datasets`` (strings),
``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32). llama-quantize uses
``in_sum2 / counts`` per channel (:meth:`Imatrix.values`). The legacy ``.dat`` format is read too.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import CorruptFileError, InputError
from edgekit.progress import ProgressFn, report

from ..gptq.calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, MIN_SEQ_LEN
from ..textsets import bos_id, calibration_texts, token_stream
from .archs import ArchSpec, TextConfig
from .dequant import composites_of, hf_names

if TYPE_CHECKING:
    from ..lora import LoraAdapter
    from ..source import SourceModel

log = logging.getLogger(__name__)

IMATRIX_FILE = "imatrix.gguf"
_OPTION = "--imatrix / imatrix="
SUM2, COUNTS = ".in_sum2", ".counts"
_FILE_HINT = "pass an importance matrix made by llama-imatrix or edgekit (imatrix.gguf or a legacy .dat)"
KEY_DATASETS, KEY_CHUNKS, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass
class Imatrix:
    """Per GGUF tensor name: the per-channel sum of squared inputs ``[experts, channels]`` and
    the tokens counted ``[experts]`` (float32, as the file stores them)."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int
    chunk_size: int

    def values(self) -> dict[str, np.ndarray]:
        """What llama-quantize hands its quantizer: the mean square per channel (1 where a matrix
        saw no token, as llama.cpp does), flattened over experts."""
        out: dict[str, np.ndarray] = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].reshape(-1, 1)
            mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.float32(1))
            out[name] = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        return out

    def describe(self) -> dict[str, Any]:
        return {"tensors": len(self.sums), "datasets": self.datasets, "chunk_count": self.chunk_count,
                "chunk_size": self.chunk_size}

    def write(self, path: Path) -> None:
        """llama.cpp's GGUF imatrix file (caller handles the temporary name)."""
        import gguf

        w = gguf.GGUFWriter(str(path), arch="", endianess=gguf.GGUFEndian.LITTLE)
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(KEY_DATASETS, list(self.datasets))
        w.add_uint32(KEY_CHUNKS, int(self.chunk_count))
        w.add_uint32(KEY_CHUNK_SIZE, int(self.chunk_size))
        for name in sorted(self.sums):
            # numpy [experts, channels] is ggml [ne0 = channels, ne1 = experts]
            w.add_tensor(name + SUM2, np.ascontiguousarray(self.sums[name], dtype=np.float32))
            w.add_tensor(name + COUNTS, np.ascontiguousarray(self.counts[name], dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def read_imatrix(path: Path) -> Imatrix:
    """An imatrix file: llama.cpp's GGUF format, or the legacy ``.dat`` of older ``llama-imatrix``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"importance matrix {path} is a directory, not a file",
                         hint="--imatrix takes an optional FILE: put it after MODEL_DIR, or write --imatrix=FILE")
    if not path.is_file():
        raise InputError(f"importance matrix {path} does not exist",
                         hint=f"pass a file made by llama-imatrix or edgekit, or {_OPTION.split(' /')[0]} alone "
                              f"(imatrix=True) to compute one from the model")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    import gguf

    from .inspect import read_gguf

    read_gguf(path)  # untrusted: edgekit's validator before gguf-py's reader sizes arrays from the header
    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError, struct.error) as e:
        raise CorruptFileError(path, f"is not a readable GGUF ({e})") from e
    field = r.get_field("general.type")
    if field is None or field.contents() != "imatrix":
        raise InputError(f"{path} is a GGUF but not an importance matrix (general.type is "
                         f"{field.contents() if field is not None else 'missing'!r})",
                         hint="pass the imatrix.gguf written by llama-imatrix or edgekit, not a model")
    tensors = {t.name: t for t in r.tensors}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tname, t in tensors.items():
        if not tname.endswith(SUM2):
            continue
        name = tname[: -len(SUM2)]
        c = tensors.get(name + COUNTS)
        if c is None or t.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise CorruptFileError(path, f"{name}: needs float32 {SUM2} and {COUNTS} tensors")
        n_mat = int(c.n_elements)
        sums[name] = np.array(t.data, dtype=np.float32).reshape(n_mat, -1)
        counts[name] = np.array(c.data, dtype=np.float32).reshape(n_mat)
    if not sums:
        raise CorruptFileError(path, "holds no importance matrix entries")

    def scalar(key: str) -> int:
        f = r.get_field(key)
        return int(f.contents()) if f is not None else 0

    ds = r.get_field(KEY_DATASETS)
    datasets = [str(x) for x in ds.contents()] if ds is not None else []
    return Imatrix(sums, counts, datasets, scalar(KEY_CHUNKS), scalar(KEY_CHUNK_SIZE))


def _read_legacy(path: Path) -> Imatrix:
    """``int32 n; n x (int32 len, name, int32 ncall, int32 nval, float[nval])``, then optionally
    ``int32 chunks, int32 len, dataset``. Its sums are already means x ncall: counts = ncall."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise CorruptFileError(path, "is neither a GGUF nor a complete legacy imatrix .dat", hint=_FILE_HINT)
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i")
    if n < 1:
        raise CorruptFileError(path, "is neither a GGUF nor a legacy imatrix .dat (no entries)", hint=_FILE_HINT)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for _ in range(n):
        (length,) = take("<i")
        name = take(f"<{length}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise CorruptFileError(path, f"{name}: no values")
        sums[name] = np.array(take(f"<{nval}f"), dtype=np.float32).reshape(1, nval)
        counts[name] = np.array([ncall], dtype=np.float32)
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0:
                datasets.append(take(f"<{length}s")[0].decode("utf-8", "replace"))
    return Imatrix(sums, counts, datasets, chunks, 0)


def check_against(im: Imatrix, expected: dict[str, int], where: str) -> None:
    """``expected``: GGUF matrix name -> input channels (ne0). A name the model lacks, or a wrong
    width, is an error listing a few; matrices the file does not cover are quantized without it
    (llama.cpp refuses those that cannot be, by name)."""
    unknown = sorted(n for n in im.sums if n not in expected)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise InputError(f"importance matrix {where} names {len(unknown)} tensor(s) this model does not have: "
                         f"{', '.join(unknown[:3])}{more}",
                         hint=f"pass the imatrix made for this model, or {_OPTION.split(' /')[0]} alone "
                              f"(imatrix=True) to compute one from it")
    wrong = sorted(n for n, s in im.sums.items() if s.shape[1] != expected[n])
    if wrong:
        n = wrong[0]
        raise InputError(f"importance matrix {where}: {n} has {im.sums[n].shape[1]} channels where the model's "
                         f"tensor has {expected[n]}" + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""),
                         hint="pass the imatrix made for this model, or compute one with --imatrix / imatrix=True")


def matrix_widths(source: SourceModel, spec: ArchSpec) -> dict[str, int]:
    """GGUF name -> input channels of every matrix the writer produces (2-D weights, and the 3-D
    expert stacks: one matrix per expert)."""
    cfg = TextConfig.from_hf(source.config)
    out = {g: int(source.info(hf).shape[-1]) for g, hf in hf_names(source, spec, cfg).items()
           if len(source.info(hf).shape) == 2}
    out.update({c.gguf_name: int(c.shape[-1]) for c in composites_of(source, spec, cfg) if len(c.shape) >= 2})
    return out


# --------------------------------------------------------------------------- computing one

def calibration_windows(tokenizer: Any, ids: list[int], samples: int, seq_len: int) -> list[list[int]]:
    """Up to ``samples`` windows of ``seq_len`` tokens (BOS first where the model adds it), evenly
    spread over ``ids`` as GPTQ's; fewer when the text is short (an imatrix needs no fixed count)."""
    bos = bos_id(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    n = min(samples, len(ids) // body)
    if n < 1:
        raise InputError(f"the calibration text has {len(ids)} tokens, fewer than one window of {seq_len}",
                         hint="pass more text with --calibration / calibration=, or leave it out for the packaged mix")
    step = (len(ids) - body) / max(n - 1, 1)
    starts = [round(i * step) if n > 1 else 0 for i in range(n)]
    return [([bos] if bos is not None else []) + ids[s:s + body] for s in starts]


def compute_imatrix(model_dir: Path, source: SourceModel, spec: ArchSpec, *, adapter: LoraAdapter | None = None,
                    calibration: Path | None = None, samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                    threads: int | None = None, progress: ProgressFn | None = None) -> Imatrix:
    """Run the calibration text through the source model (merged with ``adapter``) layer by layer
    and add up every matrix's squared inputs."""
    import torch
    from transformers import AutoTokenizer

    from ..checkpoint_layout import checkpoint_layout, read_param, torch_dtype
    from ..layerwise import LayerwiseLM, empty_model

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = calibration_texts(calibration, tokenizer)
    max_pos = int(source.config.get("max_position_embeddings") or seq_len)
    seq_len = max(MIN_SEQ_LEN, min(seq_len, max_pos))
    windows = calibration_windows(tokenizer, token_stream(tokenizer, [texts.text()]), samples, seq_len)
    report(progress, "imatrix", f"{len(windows)} windows of {len(windows[0])} tokens ({texts.source})")

    # bf16 stays bf16 (no float32 copy of the model); f16 runs in float32: one layer at a time is
    # resident, f16 activations can overflow, and CPU f16 matmuls are ~10x slower than float32.
    dtype = torch_dtype(source)
    dtype = torch.float32 if dtype == torch.float16 else dtype
    model = empty_model(model_dir, dtype)
    lm = LayerwiseLM(model)
    stored, parts = checkpoint_layout(lm, source, spec)
    merged = set(adapter.target_tensors) if adapter is not None else set()
    if merged & {p for ps in parts.values() for p in ps}:
        raise InputError("the LoRA adapter changes expert matrices; edgekit's importance matrix does not merge "
                         "those", hint="convert without --imatrix / imatrix=, or merge the adapter first")

    def tensor(name: str) -> Any:
        canon = lm.aliases[name]
        s = stored[canon]
        if s in merged:
            assert adapter is not None
            return torch.from_numpy(np.require(adapter.merge(s, source.float32(s)), requirements=["W"]))
        return read_param(source, lm, canon, stored, parts)

    cfg = TextConfig.from_hf(source.config)
    to_gguf = {hf: g for g, hf in hf_names(source, spec, cfg).items()}
    # each checkpoint tensor of an expert stack -> the stacks (GGUF names) its rows went into
    in_stacks: dict[str, list[str]] = {}
    for comp in composites_of(source, spec, cfg):
        for piece in comp.pieces:
            in_stacks.setdefault(piece.hf_name, [])
            if comp.gguf_name not in in_stacks[piece.hf_name]:
                in_stacks[piece.hf_name].append(comp.gguf_name)
    sums: dict[str, torch.Tensor] = {}  # [experts, channels] (one row for a plain matrix)
    counts: dict[str, torch.Tensor] = {}  # [experts]

    def add(key: str, s: Any, c: Any) -> None:
        sums[key] = sums[key] + s if key in sums else s
        counts[key] = counts[key] + c if key in counts else c

    def hook(key: str) -> Any:
        def pre(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            add(key, x.float().square().sum(dim=0, keepdim=True), torch.tensor([float(x.shape[0])]))
        return pre

    def stacks_of(param: str) -> list[str]:
        canon = lm.aliases[param]
        names = parts.get(canon, (stored[canon],))
        return list(dict.fromkeys(g for n in names for g in in_stacks.get(n, [])))

    def experts_hook(gate_up: list[str], down: list[str]) -> Any:
        """Per expert: the squared inputs of the tokens routed to it (gate and up share them) and
        of its down projection (silu(gate) * up, recomputed), and the number of those tokens."""
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
            x = x.reshape(-1, x.shape[-1])
            n = int(module.gate_up_proj.shape[0])
            routed = torch.nn.functional.one_hot(idx.reshape(x.shape[0], -1), n).amax(dim=1).float()  # [T, E]
            c = routed.sum(dim=0)
            sq = x.float().square()
            for key in gate_up:
                add(key, routed.T @ sq, c)
            mid = torch.zeros((n, int(module.down_proj.shape[-1])), dtype=torch.float32)
            for e in range(n):
                rows = routed[:, e].bool()
                if rows.any():
                    g, u = torch.nn.functional.linear(x[rows], module.gate_up_proj[e]).chunk(2, dim=-1)
                    mid[e] = (module.act_fn(g) * u).float().square().sum(dim=0)
            for key in down:
                add(key, mid, c)
        return pre

    module_names = {id(m): n for n, m in model.named_modules()}
    handles: list[Any] = []

    def hook_linears(root: Any) -> None:
        for mod in root.modules():
            if isinstance(mod, torch.nn.Linear):
                hf = stored[lm.aliases[f"{module_names[id(mod)]}.weight"]]
                if hf in to_gguf:
                    handles.append(mod.register_forward_pre_hook(hook(to_gguf[hf])))
            elif _is_experts(mod, cfg.hidden_size):  # transformers 5's fused expert stacks
                name = module_names[id(mod)]
                gate_up, down = stacks_of(f"{name}.gate_up_proj"), stacks_of(f"{name}.down_proj")
                if gate_up or down:
                    handles.append(mod.register_forward_pre_hook(experts_hook(gate_up, down), with_kwargs=True))

    def load(i: int) -> None:
        for name in lm.layer_names[i]:
            lm.set(name, tensor(name))
        hook_linears(lm.layers[i])

    def unload(i: int) -> None:
        while handles:
            handles.pop().remove()
        for name in lm.layer_names[i]:
            lm.drop(name)

    def tick(done: int, total: int) -> None:
        report(progress, "imatrix", done=done, total=total)

    for name in lm.resident_names:
        lm.set(name, tensor(name))
    try:
        hidden = lm.run(windows, load, unload, tick)
        # The LM head's input (the final hidden state after the norm): its forward is replaced
        # by one that only counts, so no positions x vocabulary logits are computed.
        head = model.get_output_embeddings()
        head_key = to_gguf.get(stored[lm.aliases[f"{module_names[id(head)]}.weight"]])
        if head_key is not None:
            counting = hook(head_key)

            def count_only(h: Any) -> Any:
                counting(head, (h,))
                return torch.zeros((*h.shape[:-1], 1), dtype=torch.float32)

            head.forward = count_only
            try:
                for ids, h in zip(windows, hidden, strict=True):
                    for _ in lm.replay(ids, h, 0, rows=len(ids)):
                        pass
            finally:
                del head.forward
    finally:
        while handles:
            handles.pop().remove()
        for name in lm.resident_names:
            lm.drop(name)
    if not sums:
        raise InputError(f"no weight matrix of {source.architecture} was seen by the calibration pass",
                         hint="report this model; convert without --imatrix / imatrix= meanwhile")
    return Imatrix({k: v.numpy().astype(np.float32) for k, v in sums.items()},
                   {k: c.numpy().astype(np.float32).reshape(-1) for k, c in counts.items()},
                   [texts.source], len(windows), len(windows[0]))


def _is_experts(module: Any, hidden: int) -> bool:
    """A transformers 5 experts module this pass can count: ``gate_up_proj`` ``[E, 2*ff, hidden]``
    (gate rows then up rows per expert), ``down_proj`` ``[E, hidden, ff]``, a SwiGLU ``act_fn``."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if gate_up is None or down is None or not hasattr(module, "act_fn") or getattr(module, "is_transposed", False):
        return False
    return (gate_up.dim() == 3 and down.dim() == 3 and gate_up.shape[-1] == hidden and down.shape[1] == hidden
            and gate_up.shape[1] == 2 * down.shape[-1])
