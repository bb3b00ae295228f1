"""edgekit: convert fine-tuned LLMs to GGUF / ONNX / GPTQ, verify them, run them on edge hardware."""

from __future__ import annotations

__version__ = "0.1.0"
