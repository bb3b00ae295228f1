"""The fixed probe set every artifact is checked on (GGUF, ONNX, GPTQ alike).

Tokenizer probes cover what breaks tokenizer conversions in practice: whitespace runs,
digit grouping (pre-tokenizer regexes differ on \\p{N}{1,3} vs single digits), code,
non-Latin scripts, emoji (multi-byte + byte fallback), and the empty string.
"""

from __future__ import annotations

TOKENIZER_PROBES: dict[str, str] = {
    "ascii": "The quick brown fox jumps over the lazy dog. It's 5 o'clock, isn't it?",
    "code": "def add(a, b):\n    return a + b  # sum\n\nif __name__ == \"__main__\":\n\tprint(add(1, 2))\n",
    "whitespace": "a  b   c    d\n\n\n  e\t\tf \r\n g      ",
    "digits": "1 12 123 1234 12345 3.14159 2026-11-23 1,000,000 0x1F",
    "cjk": "日本語のテキストと中文文本，还有한국어 텍스트。",
    "emoji": "Emoji: 🙂🚀👩‍💻 and flags 🇫🇷 mixed with text ✓",
    "empty": "",
    "mixed_case": "HELLO World hello WORLD HeLLo wOrLd",
}

# A two-turn conversation; rendered through the model's chat template as one more probe.
CHAT_PROBE: list[dict[str, str]] = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
]

# Texts whose next-token distributions are compared (logits) and scored (perplexity).
LOGIT_PROBES: tuple[str, ...] = (
    "The history of the city begins with a small settlement on the river, where traders met",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In mathematics, a prime number is a natural number greater than 1 that is not a product of",
)
