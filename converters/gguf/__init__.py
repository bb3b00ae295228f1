"""GGUF (llama.cpp) export."""
