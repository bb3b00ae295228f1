"""Train a second small model, on the packaged general mix instead of the docstring corpus.

    python scripts/train_mix_model.py [--out /tmp/edgekit-mix-model] [--steps 400] [--threads 1]

Same recipe as the demo model (``edgekit.demo.train``: byte-level BPE of 1024 tokens, a
2.6M-parameter Llama, hidden 256, intermediate 512, seeded), but trained on the packaged
calibration mix (prose, code and dialogue; ``edgekit/data/textsets/calibration.jsonl``) with
the evaluation mix as its held-out text. It is the second trained model of the GPTQ
cross-domain study (``benchmarks/gptq_domains.py``): a model that has seen all three domains,
so that no domain is out of distribution for the model itself, only for the calibration.
The weights are not committed; rerun this script (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-mix-model")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from edgekit.converters import textsets
    from edgekit.demo import train

    with tempfile.TemporaryDirectory() as tmp:
        corpus, held = Path(tmp) / "mix.txt", Path(tmp) / "mix-heldout.txt"
        corpus.write_text(textsets.packaged(textsets.CALIBRATION).text(), encoding="utf-8")
        held.write_text(textsets.eval_text(), encoding="utf-8")
        # the demo recipe, pointed at the mix: train() reads these two names from its module
        train.corpus_path = lambda: corpus  # type: ignore[assignment]
        train.heldout_path = lambda: held  # type: ignore[assignment]
        train.THREADS = args.threads
        train.train(args.steps, args.out, eval_every=100)
    card = re.sub(r"- command: `[^`]*`", f"- command: `python scripts/train_mix_model.py --steps {args.steps} "
                  f"--threads {args.threads}`", (args.out / "TRAINING.md").read_text(encoding="utf-8"))
    (args.out / "TRAINING.md").write_text(
        card
        .replace("`edgekit/data/corpus.txt`\n(docstrings and small functions of the Python standard library, PSF license)",
                 "the packaged calibration mix\n(`edgekit/data/textsets/calibration.jsonl`: prose, code, dialogue; "
                 "see SOURCES.md there)")
        .replace("`edgekit/data/heldout.txt`", "the packaged evaluation mix")
        .replace("# edgekit demo model", "# edgekit mix model (second model of the GPTQ study)"),
        encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
