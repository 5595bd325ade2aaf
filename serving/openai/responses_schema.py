"""Pydantic models of OpenAI's Responses API body (``POST /v1/responses``), the subset this server
implements: ``input`` as a string or items (messages with text content, ``function_call``,
``function_call_output``, ``reasoning`` items handed back), ``instructions``, ``max_output_tokens``,
the sampling fields, function tools in Responses' flat shape with ``tool_choice``, and ``text.format``.

As in ``schema.py``: a field this server knows but cannot honour is refused by ``unsupported()``
with a 400 naming it; unknown fields are ignored (clients send extras such as ``include`` or
``truncation``). Items are lenient about the fields a client echoes back from an earlier response
(ids, status, annotations).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.openai.schema import SamplerFields


class InputPart(BaseModel):
    """One content part of a message item: ``input_text`` (a user's or system's), ``output_text``
    (an assistant's, as an earlier response returned it), ``input_image`` (a user's picture:
    ``image_url``, a data URL); anything else is refused by name."""

    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None


class InputItem(BaseModel):
    """One item of ``input``. ``type`` "message" (the default when a role is given),
    "function_call" (a call the model made earlier), "function_call_output" (its result),
    "reasoning" (thinking an earlier response returned) or "item_reference"."""

    model_config = ConfigDict(extra="ignore")
    type: str | None = None
    # message
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[InputPart] | None = None
    # function_call / function_call_output
    call_id: str | None = Field(None, max_length=256)
    name: str | None = Field(None, max_length=256)
    arguments: str | None = None
    output: str | list[InputPart] | None = None
    # reasoning
    summary: list[InputPart] | None = None
    id: str | None = None

    @property
    def kind(self) -> str:
        return self.type or ("message" if self.role else "")


class FunctionTool(BaseModel):
    """Responses' flat function tool: {type: "function", name, description, parameters, strict}.
    Other tool types (web_search, file_search, ...) are refused by name in ``unsupported()``."""

    model_config = ConfigDict(extra="ignore")
    type: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_shape(self) -> dict:
        """The chat-completions shape the chat template and the tool-call parser know."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        if self.parameters is not None:
            fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


class NamedFunctionChoice(BaseModel):
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    """``text.format``: {type: "text"}, {type: "json_object"} or {type: "json_schema", name, schema,
    strict, description} (flat, unlike chat completions' nested json_schema)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(SamplerFields):
    """The body of POST /v1/responses. Its sampling fields are chat completions' (``SamplerFields``);
    the ones that have a Responses name of their own (``max_output_tokens``, ``text.format``) are
    refused under their chat name so that one request never says a thing twice."""

    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    # known Responses fields this server does not implement: refused when set
    conversation: Any = None
    prompt: Any = None
    background: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> tuple[str, str] | None:
        for name in ("conversation", "prompt"):
            if getattr(self, name) is not None:
                return name, f"{name} is not supported by this server: send the whole conversation in input"
        if self.background:
            return "background", "background responses are not supported by this server"
        if self.top_logprobs:
            return "top_logprobs", "top_logprobs is not supported on /v1/responses by this server"
        if self.n != 1:
            return "n", "/v1/responses returns one output"
        if self.response_format is not None:
            return "response_format", "on /v1/responses the output format is text.format"
        if self.reasoning is not None and self.reasoning.effort not in (None, "none"):
            return ("reasoning", "reasoning.effort is not supported by this server (a model that thinks does so "
                    "on its own; its thinking comes back as reasoning items)")
        for i, t in enumerate(self.tools or ()):
            if t.type != "function":
                return "tools", f"tools[{i}]: tools of type {t.type!r} are not supported by this server (function only)"
            if not t.name:
                return "tools", f"tools[{i}]: a function tool needs a name"
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            return "tool_choice", "tool_choice needs tools"
        if isinstance(self.tool_choice, NamedFunctionChoice):
            if self.tool_choice.name not in [t.name for t in self.tools or ()]:
                return "tool_choice", f"tool_choice names {self.tool_choice.name!r}, which is not among the tools"
        return self.common_unsupported()
