"""What every API dialect of the server shares: the pipeline (parse -> convert -> open -> respond),
the error mapper and the stream writer. Each dialect (``serving/openai/``, ``serving/anthropic/``,
``serving/ollama/``) is a translation on them; nothing here knows any dialect's shapes."""
