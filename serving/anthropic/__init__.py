"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) as a translation on the shared
API pipeline (``serving/api/``)."""
