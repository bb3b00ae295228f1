"""Fixtures: tiny models built here, never downloaded.

Dimensions are multiples of 256 (k-quants apply, GPTQ group 128 applies) and differ from
each other -- hidden 256, intermediate 768, vocab 1024 -- because an exporter that finds
tensors by shape silently mixes them up when two dimensions coincide.
"""

from __future__ import annotations

import os

# Quality is measured on 1,024 evaluation tokens here instead of 8,192: the suite converts
# dozens of models and checks what the measurement does, not its precision (tests that rank
# quant types pass their own, larger eval settings). Set before edgekit is imported.
os.environ.setdefault("EDGEKIT_EVAL_TOKENS", "1024")

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekit.demo import corpus_path

HIDDEN, INTERMEDIATE, VOCAB, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 768, 1024, 2, 4, 2, 64
# Random weights are only good for structural parity at float precision (f16/bf16/f32: the
# relative logit error flags a wrong permutation or norm at O(1) vs ~1e-3); quantization
# thresholds are checked on the trained demo model, since random nets make top-1 noise.
INIT_STD = 0.05

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _text(limit: int = 300_000) -> str:
    return corpus_path().read_text(encoding="utf-8")[:limit]


def build_bpe_tokenizer(out: Path, regex: str = LLAMA3_REGEX, vocab_size: int = 900) -> Path:
    """Byte-level BPE like Llama 3 / Qwen2 (regex split + ByteLevel), ChatML specials, BOS added."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_text()], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                   pad_token="<|end_of_text|>")
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_spm_tokenizer(out: Path, vocab_size: int = 900) -> Path:
    """SentencePiece BPE with byte fallback (Llama 2 / Mistral style), saved with tokenizer.model."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    text_file = out / "_train.txt"
    text_file.write_text(_text(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(out / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], num_threads=2, minloglevel=2,
        split_digits=True,
    )
    text_file.unlink()
    (out / "tokenizer.vocab").unlink()
    # transformers 5 builds the fast tokenizer from tokenizer.model when loading a directory.
    # legacy=True: "▁" is prepended after special tokens too, as in Llama 2 and as llama.cpp does
    # (legacy=False prepends only at the very start; the verifier rejects that pairing).
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": True}))
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    # transformers 5's LlamaTokenizer re-derives its pre-tokenizer instead of reading the saved
    # tokenizer.json (and then drops the "▁" after special tokens that llama.cpp keeps); the
    # generic class uses tokenizer.json as written, so both sides tokenize the same file.
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def _config(arch: str, vocab: int, layers: int = LAYERS) -> object:
    import transformers as T

    common = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, vocab_size=vocab,
                  max_position_embeddings=1024, initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None)
    if arch == "llama":
        return T.LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "mistral":
        return T.MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
    if arch == "qwen2":
        return T.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return T.Qwen3Config(**common, tie_word_embeddings=True)
    if arch == "gemma3":
        # llama.cpp scales attention by 1/sqrt(head_dim) for Gemma 3 (except 27B): keep HF equal.
        return T.Gemma3TextConfig(**common, query_pre_attn_scalar=HEAD_DIM, sliding_window=512)
    if arch == "lfm2":  # the hybrid families' configs live with their tests
        from test_archs_hybrid import HYBRID_CONFIGS

        return HYBRID_CONFIGS[arch]()
    if arch == "granite4":
        from test_archs_granite4 import granite4_config

        return granite4_config()
    if arch in ("qwen35", "qwen35-vl"):
        from test_archs_qwen35 import QWEN35_CONFIGS

        return QWEN35_CONFIGS[arch]()
    if arch in ("qwen3-moe", "mixtral"):
        from test_archs_moe import MOE_CONFIGS

        return MOE_CONFIGS[arch]()
    if arch in ("gemma4", "gemma4-vl"):
        from test_archs_gemma4 import GEMMA4_CONFIGS

        return GEMMA4_CONFIGS[arch]()
    raise ValueError(arch)


_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def build_model(arch: str, tokenizer_dir: Path, out: Path, *, seed: int = 0, shard: bool = False,
                layers: int = LAYERS) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(seed)
    cfg = _config(arch, VOCAB, layers)
    model = getattr(T, _CLASSES[arch])(cfg).eval()
    with torch.no_grad():  # norms start at exactly 1 (0 for Gemma): perturb them so a wrong offset shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(out, max_shard_size="500KB" if shard else "5GB")
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def bpe_tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("tok-bpe"))


@pytest.fixture(scope="session")
def qwen_tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("tok-qwen"), QWEN2_REGEX)


@pytest.fixture(scope="session")
def spm_tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_spm_tokenizer(tmp_path_factory.mktemp("tok-spm"))


# Which tokenizer family each architecture gets in the tests (one per real-world pairing).
ARCH_TOKENIZER = {"llama": "spm_tok", "mistral": "spm_tok", "qwen2": "qwen_tok", "qwen3": "qwen_tok",
                  "gemma3": "bpe_tok"}


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[..., Path]:
    cache: dict[tuple[str, str, bool], Path] = {}

    def make(arch: str, tokenizer: str | None = None, shard: bool = False) -> Path:
        tok_fixture = tokenizer or ARCH_TOKENIZER[arch]
        key = (arch, tok_fixture, shard)
        if key not in cache:
            tok_dir = request.getfixturevalue(tok_fixture)
            cache[key] = build_model(arch, tok_dir, tmp_path_factory.mktemp(f"{arch}-{tok_fixture}"), shard=shard)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def llama_bpe(model_factory: Callable[..., Path]) -> Path:
    """The workhorse: a Llama-3-style model (byte-level BPE)."""
    return model_factory("llama", "bpe_tok")


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())


@pytest.fixture(scope="session")
def lora_adapter(llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter for ``llama_bpe`` whose B matrices are non-zero (a real change)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama_bpe)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # PEFT starts B at zero (a no-op adapter): make it do something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    adapter = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(adapter)
    return adapter


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo model converted once to f16, q8_0 and q4_k_m (real text: quality and
    generations mean something). Shared by the runtime, bench and eval tests: read-only."""
    from edgekit.converters.gguf.convert import convert_gguf
    from edgekit.demo import demo_model_dir

    out = tmp_path_factory.mktemp("demo-out")
    convert_gguf(demo_model_dir(), out, "f16,q8_0,q4_k_m", name="demo")
    return out
