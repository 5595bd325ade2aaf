"""The OpenAI-compatible /v1 edge (and llama-server's /tokenize, /detokenize)."""
