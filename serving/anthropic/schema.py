"""Pydantic models of Anthropic's Messages API, the subset this server implements: the bodies of
/v1/messages and /v1/messages/count_tokens.

Content blocks are told apart by their ``type``: text, tool_use, tool_result and thinking are read;
an image block's picture goes to a vision model (base64, or a URL where the server allows fetching);
a document block is refused with a 400 naming it.
Unknown top-level fields are ignored, as Anthropic's SDKs send extras (metadata, service_tier).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Block(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(Block):
    type: Literal["text"]
    text: str


class ToolUseBlock(Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)


class ThinkingBlock(Block):
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(Block):
    type: Literal["redacted_thinking"]


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Block):
    """A picture: ``{"type": "base64", "media_type": "image/png", "data": ...}`` or ``{"type": "url", "url": ...}``."""

    type: Literal["image"]
    source: ImageSource


class UnsupportedBlock(Block):
    """A block this server cannot read (refused by name in the conversion)."""

    type: Literal["document", "search_result", "server_tool_use", "web_search_tool_result"]


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
                         | ImageBlock | UnsupportedBlock, Field(discriminator="type")]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    """Structured output: the reply's text must match ``format``'s JSON schema (``effort`` is ignored)."""

    model_config = ConfigDict(extra="ignore")
    format: OutputFormat | None = None


class CountTokensRequest(BaseModel):
    """The body of /v1/messages/count_tokens (and the start of /v1/messages')."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """The body of /v1/messages: ``max_tokens`` is required, as Anthropic requires it."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
