"""GPTQ vs round-to-nearest across text domains: does calibration on one domain generalise to another?

For one model (default: the packaged demo model) and a grid of GPTQ settings, this
calibrates GPTQ on one domain of the packaged calibration mix (or on the whole mix, on the
old default ``corpus.txt``, or on a file) and measures mean KL against the float32 model
on each domain of the packaged *evaluation* mix (disjoint from every calibration text),
next to symmetric round-to-nearest (RTN) on the same grid (bits, group size, the same
min-max float16 scales). GPTQ should beat RTN everywhere; where it loses out of its
calibration domain, it is fitting the calibration text instead of the model.

    python benchmarks/gptq_domains.py [MODEL_DIR] --calibration-domain code,prose \\
        --eval-domain prose,code --dampening 0.01,0.1 --act-order off,on --group-size 128

Each GPTQ run quantizes a fresh float32 copy in process (llmcompressor, as ``edgekit convert
--to gptq`` does) and scores the dequantized weights with transformers, so the figures are
those of the method, not of a runtime. Evaluation: windows of ``--eval-ctx`` tokens, the
second half of each scored (as llama-perplexity does), up to ``--eval-tokens`` scored
positions per domain. For vocabularies over 65,536 the reference keeps its top 256
log-probabilities and the tail's mass (KL over head + one tail bucket: exact for the head,
a lower bound overall). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _results import save_results  # benchmarks/ sibling (scripts run from this folder)

FULL_VOCAB_MAX = 65_536
TOP_K = 256


@dataclass
class RefScores:
    """What KL needs from the float model at the scored positions of one window."""

    full: Any | None  # [n, vocab] log-probs (small vocabularies)
    top_idx: Any | None  # [n, k] token ids of the top-k
    top_lp: Any | None  # [n, k] their log-probs
    tail: Any | None  # [n] log of the probability outside the top-k


def _csv(kind: type, text: str) -> list[Any]:
    out = []
    for t in text.split(","):
        t = t.strip()
        out.append({"on": True, "off": False}[t] if kind is bool else kind(t))
    return out


def eval_windows(tokenizer: Any, domain: str, ctx: int, scored: int) -> list[list[int]]:
    """Windows of ``ctx`` tokens spread over the domain's evaluation text (BOS first when the model uses one)."""
    from edgekit.converters import textsets

    ids = textsets.token_stream(tokenizer, [textsets.eval_text(domain)])
    bos = textsets.bos_id(tokenizer)
    body = ctx - (bos is not None)
    n = max(1, min(scored // (ctx - ctx // 2), len(ids) // body))
    step = (len(ids) - body) // max(n - 1, 1)
    return [([bos] if bos is not None else []) + ids[i * step: i * step + body] for i in range(n)]


def reference_scores(model: Any, windows: list[list[int]]) -> list[RefScores]:
    import torch

    out = []
    with torch.inference_mode():
        for w in windows:
            lp = torch.log_softmax(model(input_ids=torch.tensor([w])).logits[0, len(w) // 2:].float(), -1)
            if lp.shape[-1] <= FULL_VOCAB_MAX:
                out.append(RefScores(lp, None, None, None))
                continue
            top_lp, top_idx = lp.topk(TOP_K, -1)
            rest = torch.log1p(-top_lp.exp().sum(-1).clamp(max=1 - 1e-7))
            out.append(RefScores(None, top_idx, top_lp, rest))
            del lp
    return out


def mean_kl(model: Any, windows: list[list[int]], refs: list[RefScores]) -> float:
    import torch

    total, n = 0.0, 0
    with torch.inference_mode():
        for w, ref in zip(windows, refs, strict=True):
            lq = torch.log_softmax(model(input_ids=torch.tensor([w])).logits[0, len(w) // 2:].float(), -1)
            if ref.full is not None:
                kl = (ref.full.exp() * (ref.full - lq)).sum(-1)
            else:
                q_top = lq.gather(-1, ref.top_idx)
                q_rest = torch.log1p(-q_top.exp().sum(-1).clamp(max=1 - 1e-7))
                kl = (ref.top_lp.exp() * (ref.top_lp - q_top)).sum(-1) + ref.tail.exp() * (ref.tail - q_rest)
            total += float(kl.sum())
            n += kl.numel()
    return total / max(n, 1)


def calibration_text(name: str) -> str:
    from edgekit.converters import textsets
    from edgekit.demo import corpus_path

    if name == "mix":
        return textsets.packaged("calibration").text()
    if name == "corpus":  # the default before the mix: the demo model's docstring corpus
        return corpus_path().read_text(encoding="utf-8")
    if name in textsets.DOMAINS:
        return textsets.packaged("calibration", name).text()
    return textsets.calibration_texts(Path(name)).text()


def with_weights(base: Any, quantized: dict[str, Any]) -> Any:
    import torch

    m = copy.deepcopy(base)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for name, q in quantized.items():
            mods[name].weight.copy_(torch.from_numpy(q.dequantize()))
    return m


def main() -> int:
    from edgekit.converters.gptq.calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
    from edgekit.converters.gptq.engine import DAMPENING, DEFAULT_GROUP_SIZE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="HF model dir (default: the demo model)")
    ap.add_argument("--calibration-domain", default="code,prose",
                    help="comma list of prose, code, dialogue, mix (the packaged calibration mix), corpus "
                         "(the old default, corpus.txt) or a path (default %(default)s)")
    ap.add_argument("--eval-domain", default="prose,code,dialogue", help="comma list (default %(default)s)")
    ap.add_argument("--dampening", default=str(DAMPENING), help="comma list of fractions (default %(default)s)")
    ap.add_argument("--act-order", default="off", help="comma list of on/off (default %(default)s)")
    ap.add_argument("--group-size", default=str(DEFAULT_GROUP_SIZE), help="comma list (default %(default)s)")
    ap.add_argument("--samples", default=str(DEFAULT_SAMPLES), help="comma list of calibration windows")
    ap.add_argument("--seq-len", default=str(DEFAULT_SEQ_LEN), help="comma list of tokens per window")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--eval-ctx", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=3072, help="scored positions per eval domain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("bench-out/gptq_domains.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.converters.gptq.calibration import calibration_windows
    from edgekit.converters.gptq.engine import GPTQSettings, quantized_linear_names, run_gptq
    from edgekit.converters.gptq.rtn import rtn_quantize
    from edgekit.demo import demo_model_dir
    from edgekit.fsutil import write_json_atomic
    from edgekit.ui import format_table

    torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or demo_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = quantized_linear_names(base)
    domains = [d.strip() for d in args.eval_domain.split(",")]
    windows = {d: eval_windows(tokenizer, d, args.eval_ctx, args.eval_tokens) for d in domains}
    refs = {d: reference_scores(base, w) for d, w in windows.items()}
    scored = {d: sum(len(w) - len(w) // 2 for w in ws) for d, ws in windows.items()}

    rtn: dict[int, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    grid = itertools.product(args.calibration_domain.split(","), _csv(float, args.dampening), _csv(bool, args.act_order),
                             _csv(int, args.group_size), _csv(int, args.samples), _csv(int, args.seq_len))
    for calib, damp, act, gs, samples, seq_len in grid:
        if gs not in rtn:
            mods = dict(base.named_modules())
            q = {n: rtn_quantize(mods[n].weight.detach().numpy(), args.bits, gs) for n in names}
            rtn[gs] = {d: mean_kl(with_weights(base, q), windows[d], refs[d]) for d in domains}
        text = calibration_text(calib)
        cal = calibration_windows(tokenizer, text, calib, samples, seq_len)
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        q = run_gptq(model, cal.windows, GPTQSettings(bits=args.bits, group_size=gs, act_order=act, dampening=damp))
        seconds = time.perf_counter() - t0
        del model
        qmodel = with_weights(base, q)
        kl = {d: mean_kl(qmodel, windows[d], refs[d]) for d in domains}
        del qmodel
        row = {"calibration": calib, "dampening": damp, "act_order": act, "group_size": gs, "samples": samples,
               "seq_len": seq_len, "gptq_seconds": round(seconds, 1),
               "gptq_kl": kl, "rtn_kl": rtn[gs], "ratio": {d: kl[d] / rtn[gs][d] for d in domains}}
        rows.append(row)
        write_json_atomic(args.json, {"model": str(model_dir), "partial": True, "rows": rows})  # survives a kill
        print(f"{calib} damp {damp} act {'on' if act else 'off'} g{gs} {samples}x{seq_len}: "
              + ", ".join(f"{d} {kl[d]:.4f} vs RTN {rtn[gs][d]:.4f}" for d in domains), flush=True)

    headers = ["calibration", "damp", "act", "group", "samples"] + [f"{d} GPTQ / RTN" for d in domains]
    table = [[r["calibration"], r["dampening"], "on" if r["act_order"] else "off", r["group_size"],
              f"{r['samples']}x{r['seq_len']}"]
             + [f"{r['gptq_kl'][d]:.4f} / {r['rtn_kl'][d]:.4f} ({r['ratio'][d]:.2f})" for d in domains] for r in rows]
    print()
    print(format_table(headers, table))
    print(f"\nmean KL vs float32 on the packaged evaluation mix ({', '.join(f'{d} {scored[d]}' for d in domains)} "
          f"scored positions); (ratio) = GPTQ / RTN, below 1 means GPTQ wins")
    save_results({"model": str(model_dir), "bits": args.bits, "eval_ctx": args.eval_ctx, "scored": scored,
                  "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
