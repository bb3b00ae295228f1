"""A tiny Llama whose chat template ends turns with a token that is not its eos, and whose
weights make it say three words, end its turn, and -- if nothing stops it there -- go on.

The decoder layers' outputs are scaled to ~0 so each position's hidden state is its own
token's embedding: the LM head then decides the next token from the current one alone (a
bigram chain written into its rows). A real model in real runtimes: the stop is the runtime's.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from conftest import HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, VOCAB, _text

BOS, EOS, TURN, END_TURN = "<|begin_of_text|>", "<|end_of_text|>", "<|turn|>", "<|end_turn|>"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|turn|>' + m['role'] + '\n' + m['content'] + '<|end_turn|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|turn|>assistant\n' }}{% endif %}"
)
WORDS = ("Paris", " is", " lovely")  # the reply, one token each
AFTER = " oops"  # what the model says once its turn is over: seen only if it is not stopped


def build_tokenizer(out: Path, template: str = TEMPLATE, specials: tuple[str, ...] = (BOS, EOS, TURN, END_TURN)
                    ) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_text(100_000), "Paris is lovely oops\n" * 200], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    fast.chat_template = template
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_stop_model(out: Path, template: str = TEMPLATE) -> Path:
    import torch
    import transformers as T

    tok_dir = build_tokenizer(out / "_tok", template)
    tok = T.AutoTokenizer.from_pretrained(tok_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Where?"}], tokenize=False,
                                     add_generation_prompt=True)
    last = tok(prompt, add_special_tokens=False)["input_ids"][-1]
    chain = [last]
    for w in WORDS:
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (w, ids)
        chain.append(ids[0])
    end, after = tok.convert_tokens_to_ids(END_TURN), tok(AFTER, add_special_tokens=False)["input_ids"]
    assert len(after) == 1 and len(set(chain)) == len(chain)
    chain += [end, after[0]]

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, vocab_size=VOCAB,
                        max_position_embeddings=1024, initializer_range=0.02, tie_word_embeddings=False,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(1e-3)  # layers add ~nothing: the hidden state is the token's embedding
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        for src, dst in itertools.pairwise(chain):
            e = emb[src] / emb[src].pow(2).mean().sqrt()  # what the final RMSNorm makes of it
            head[dst] = 0.5 * e / HIDDEN**0.5  # logit ~ 0.5 * sqrt(hidden) = 8 against ~N(0, 0.3)
        head[after[0]] += 0.5 * emb[after[0]] / emb[after[0]].pow(2).mean().sqrt() / HIDDEN**0.5  # " oops" repeats
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    shutil.rmtree(tok_dir)
    # generation_config names the eos only: the end of turn is the template's alone
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": tok.bos_token_id,
                                                            "eos_token_id": tok.eos_token_id}))
    return out
