"""ONNX export through ONNX Runtime GenAI's model builder (ONNX + KV cache + genai_config.json)."""
