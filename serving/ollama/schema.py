"""Pydantic models of Ollama's API, the subset this server implements. Unknown fields are ignored
(``options`` this server has no use for: ``num_thread``, ``num_gpu``, ...), as
Ollama ignores what does not apply; ``images`` are refused by name (no image input here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from backends.options import SAMPLERS


class _OllamaOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_predict: int | None = None
    num_ctx: int | None = Field(default=None, ge=1)
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = None


# The model options a request may set: Ollama's own names above (Ollama's defaults where unset), then
# every sampler the server declares beyond the core ones, under its declared name (min_p, typical_p,
# the penalties, mirostat, DRY, XTC, ...), unset = its neutral value.
EXTRA_OPTIONS: tuple[str, ...] = tuple(o.name for o in SAMPLERS if not o.core)
Options = create_model("Options", __base__=_OllamaOptions, __doc__="The model options a request may set.",
                       **{o.name: (o.type | None, None) for o in SAMPLERS if not o.core})


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    function: FunctionCall


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None  # role tool: the function this result comes from
    name: str | None = None  # the older spelling of tool_name


class Function(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: Function


Format = Literal["", "json"] | dict[str, Any] | None


class Generating(BaseModel):
    """What /api/chat and /api/generate share."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    format: Format = None
    options: Options | None = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: float | str | None = None  # how long a model loaded by name stays loaded idle (convert.keep_alive_s)
    think: bool | Literal["low", "medium", "high"] | None = None


class ChatBody(Generating):
    messages: list[MessageIn] = Field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateBody(Generating):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    raw: bool = False  # the prompt as is, no chat template
    images: list[str] | None = None


class EmbedBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: float | str | None = None


class EmbeddingsBody(BaseModel):
    """The older /api/embeddings: one prompt, one vector."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    prompt: str


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    model: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)  # the older spelling
    verbose: bool = False

    def named(self) -> str:
        return self.model or self.name or ""
