"""Where weights come from and what they are: sources (local paths, the Hub), the Hub cache, the GGUF reader
and writer, the converters and provenance. Never imports an engine package (torch, llama_cpp, transformers)
at module level, nor backends.llamacpp / backends.hf."""
