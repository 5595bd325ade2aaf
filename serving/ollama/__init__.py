"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/ps, /api/show, /api/version, /api/embed,
/api/embeddings) as a translation on the shared API pipeline (``serving/api/``)."""
