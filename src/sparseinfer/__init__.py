"""sparseinfer: PowerInfer-style sparse LLM inference for GGUF models."""
