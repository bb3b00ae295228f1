"""Train the packaged demo model: a 2.6M-parameter Llama on the standard-library corpus.

Run ``python -m edgekit.demo.train`` (CPU, 7-10 minutes on 2 cores). It trains a
byte-level BPE tokenizer (Llama 3 pre-tokenizer, 1024 tokens) on ``edgekit/data/corpus.txt``,
then a small ``LlamaForCausalLM`` from scratch, and writes float16 safetensors, config,
generation config, tokenizer files and ``TRAINING.md`` to ``edgekit/demo/model/``.

Everything is seeded, and torch runs on a fixed 2 threads, so a rerun on the same versions
of torch and transformers gives the same model up to floating-point summation order.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import time
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from edgekit.demo import corpus_path, heldout_path

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "model"

SEED = 1234
THREADS = 2
VOCAB_SIZE = 1024
SEQ_LEN = 256  # tokens per training sequence, BOS included
BATCH_SIZE = 16
DEFAULT_STEPS = 700
PEAK_LR = 3e-3
MIN_LR_RATIO = 0.1
WARMUP_FRACTION = 0.05
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0

BOS, EOS, IM_START, IM_END, PAD = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>",
)
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END, PAD)

# Llama 3's pre-tokenizer regex, verbatim from its tokenizer.json.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML. No BOS in the template: the tokenizer's post-processor adds it when the rendered
# text is encoded with special tokens (as llama.cpp does with add_bos).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODEL_DIMS: dict[str, int] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 1024,
}


def build_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE laid out like Llama 3's: merges first, special tokens at the end."""
    # ignore_merges: a word found whole in the vocabulary is one token, as in Llama 3's
    # tokenizer.json and in llama.cpp's llama-bpe (which always runs that way)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_DIMS["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def build_model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(  # type: ignore[misc,call-arg]
        **MODEL_DIMS,  # type: ignore[arg-type]
        vocab_size=VOCAB_SIZE,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def encode(tok: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    """The whole text as one token stream, no special tokens."""
    ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


def batch_at(stream: torch.Tensor, starts: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Rows of [BOS] + SEQ_LEN-1 stream tokens, like a text fed with add_bos at any offset."""
    idx = starts[:, None] + torch.arange(SEQ_LEN - 1)[None, :]
    bos = torch.full((len(starts), 1), bos_id, dtype=torch.long)
    return torch.cat([bos, stream[idx]], dim=1)


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, stream: torch.Tensor, bos_id: int) -> tuple[float, int]:
    """Mean next-token NLL over the stream cut into disjoint [BOS] + window rows; (nll, tokens).

    Every stream token is scored once, the first of each window from BOS alone."""
    model.eval()
    width = SEQ_LEN - 1
    rows = [torch.cat([torch.tensor([bos_id]), stream[s : s + width]]) for s in range(0, len(stream), width)]
    full = [r for r in rows if len(r) == SEQ_LEN]
    batches = [torch.stack(full[i : i + BATCH_SIZE]) for i in range(0, len(full), BATCH_SIZE)]
    batches += [r[None, :] for r in rows if 1 < len(r) < SEQ_LEN]
    total, count = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
    model.train()
    return total / count, count


def lr_at(step: int, steps: int) -> float:
    warmup = max(1, int(steps * WARMUP_FRACTION))
    if step < warmup:
        return PEAK_LR * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return PEAK_LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(steps: int, out: Path, eval_every: int) -> None:
    started = time.monotonic()
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)

    text = corpus_path().read_text(encoding="utf-8")
    held_text = heldout_path().read_text(encoding="utf-8")
    tok = build_tokenizer(text)
    train_stream, held_stream = encode(tok, text), encode(tok, held_text)
    bos_id = int(tok.bos_token_id)
    log.info(f"tokenizer: {len(tok)} tokens; corpus {len(text):,} chars -> {len(train_stream):,} tokens, "
          f"held-out {len(held_stream):,} tokens")

    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"model: {n_params:,} parameters; {steps} steps x {BATCH_SIZE} x {SEQ_LEN} tokens "
          f"= {steps * BATCH_SIZE * SEQ_LEN / len(train_stream):.1f} epochs")

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        for group in optim.param_groups:
            group["lr"] = lr_at(step, steps)
        starts = torch.randint(0, len(train_stream) - SEQ_LEN, (BATCH_SIZE,), generator=gen)
        batch = batch_at(train_stream, starts, bos_id)
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optim.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0 or step == 0:
            recent = sum(losses[-10:]) / len(losses[-10:])
            log.info(f"step {step + 1:4d}/{steps}  loss {recent:.3f}  lr {lr_at(step, steps):.2e}  "
                  f"{time.monotonic() - started:6.0f}s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            nll, _ = evaluate(model, held_stream, bos_id)
            log.info(f"  held-out ppl {math.exp(nll):.2f}")

    final_loss = sum(losses[-20:]) / len(losses[-20:])
    nll, n_tokens = evaluate(model, held_stream, bos_id)
    ppl = math.exp(nll)
    wall = time.monotonic() - started
    log.info(f"final train loss {final_loss:.3f} (mean of last 20 steps); held-out ppl {ppl:.2f} "
          f"over {n_tokens:,} tokens; {wall:.0f}s")
    save(model, tok, out, steps=steps, final_loss=final_loss, ppl=ppl, wall=wall, n_params=n_params)


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path, *, steps: int,
         final_loss: float, ppl: float, wall: float, n_params: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = model.to(torch.float16)  # type: ignore[arg-type]
    model.config.dtype = torch.float16
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for path in out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; package data should be world-readable
    cmd = "python -m edgekit.demo.train" + ("" if steps == DEFAULT_STEPS else f" --steps {steps}")
    (out / "TRAINING.md").write_text(
        "# edgekit demo model\n\n"
        f"A {n_params:,}-parameter LlamaForCausalLM trained from scratch on `edgekit/data/corpus.txt`\n"
        "(docstrings and small functions of the Python standard library, PSF license).\n\n"
        f"- command: `{cmd}`\n"
        f"- steps: {steps} x batch {BATCH_SIZE} x {SEQ_LEN} tokens, AdamW peak lr {PEAK_LR}, cosine, seed {SEED}\n"
        f"- final train loss: {final_loss:.3f} (mean of the last 20 steps)\n"
        f"- held-out perplexity: {ppl:.2f} (`edgekit/data/heldout.txt`, per token, vocab {VOCAB_SIZE})\n"
        f"- wall time: {wall / 60:.1f} min on {THREADS} CPU threads ({platform.machine()})\n"
        f"- versions: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, Python {platform.python_version()}\n",
        encoding="utf-8",
    )
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    log.info(f"saved {out} ({meta['dtype']}, {sum(f.stat().st_size for f in out.iterdir()):,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=100, help="held-out eval interval, 0 = only at the end")
    args = parser.parse_args(argv)
    # progress goes through logging; a run from the command line shows it on stderr
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(args.steps, args.out, args.eval_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
