"""Decoder language models (Llama family) as edge packages: segments with a KV cache per block."""
