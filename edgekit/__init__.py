"""edgekit: convert fine-tuned LLMs to GGUF / ONNX / GPTQ, verify them, run them on edge hardware.

    >>> import edgekit
    >>> edgekit.convert("my-finetune/", "out/", to="gguf", quants="f16,q4_k_m")   # doctest: +SKIP
    >>> with edgekit.load("out/my-finetune-q4_k_m.gguf") as s:                    # doctest: +SKIP
    ...     print(s.generate("Hello", max_tokens=32).text)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit.runtimes.base import Session


def load(path: str | Path, *, quant: str | None = None, **options: Any) -> Session:
    """Open an artifact (GGUF file, ONNX dir, or an output dir with edgekit.json) for generation.

    Options go to the runtime: ``n_ctx`` (0: the trained context), ``n_threads``, ``device``
    (cpu|cuda|metal for GGUF, cpu|cuda|tensorrt for ONNX), ``n_gpu_layers`` (GGUF),
    ``graph_optimization`` (ONNX), ``logits_all``. Generation options (``max_tokens``,
    ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``) go to ``generate``/``stream``.
    """
    from edgekit.runtimes.registry import load as _load

    return _load(path, quant=quant, **options)


def convert(model_dir: str | Path, out_dir: str | Path, *, to: str = "gguf", **options: Any) -> Any:
    """Convert a Hugging Face model directory; every artifact is verified unless ``verify=False``.

    Takes what ``edgekit convert`` takes, by the flags' names with underscores: ``quants``,
    ``adapter``, ``name``, ``verify``, ``threads``, ``progress``; ONNX: ``target``,
    ``block_size``, ``int4_algo``, ``from_gptq``; GPTQ: ``bits``, ``group_size``, ``act_order``,
    ``calibration``, ``samples``, ``seq_len``, ``compressed_tensors``; GGUF: ``pre_tokenizer``,
    ``imatrix`` (True: computed on ``calibration``; or a file), ``tensor_type`` (the records in :mod:`edgekit.converters.options` document each). ``to`` may name several
    formats (``"gguf,onnx"``): ``quants`` is then split by format (their names are disjoint),
    each option goes to the format it belongs to (an option of a format not in ``to`` is an
    error), the source is read and the reference computed once, and a list of results is
    returned; one format returns its result alone."""
    from edgekit.converters.plan import plan_conversion
    from edgekit.converters.registry import convert_formats
    from edgekit.logs import third_party_to_log

    with third_party_to_log():  # transformers' bars and warnings: to logging, as from the CLI
        results = convert_formats(Path(model_dir), Path(out_dir), plan_conversion(to, **options))
    return results[0] if len(results) == 1 else results


def inspect(path: str | Path) -> dict[str, Any]:
    """A GGUF file's metadata and tensor table, or an output directory's manifest, as a dict."""
    from edgekit.converters.gguf.inspect import read_gguf
    from edgekit.errors import InputError, ModelNotFoundError
    from edgekit.manifest import MANIFEST_NAME, load_manifest

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist", hint="pass a .gguf file or an edgekit output directory")
    if path.is_dir() or path.name == MANIFEST_NAME:
        if not (path / MANIFEST_NAME).is_file() and path.name != MANIFEST_NAME:
            raise InputError(f"no {MANIFEST_NAME} in {path}", hint="pass an edgekit output directory or a .gguf file")
        return {"kind": "manifest", **load_manifest(path).to_dict()}
    return {"kind": "gguf", **read_gguf(path).to_dict()}


__all__ = ["__version__", "convert", "inspect", "load"]
