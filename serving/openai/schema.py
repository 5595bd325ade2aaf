"""Pydantic models of the OpenAI-compatible API (the subset this server implements): the bodies of
/v1/chat/completions, /v1/completions, /v1/embeddings and llama-server's /tokenize and /detokenize.

A field this server knows but cannot honour is declared here and refused by ``unsupported()`` with
a 400 naming it, never silently ignored; unknown fields are ignored (as OpenAI's SDK sends extras).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from backends.base import MAX_PARALLEL
from backends.options import SAMPLERS, Option


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCallIn(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this result answers
    name: str | None = None
    reasoning_content: str | None = None  # assistant: its thinking (kept out of the next prompt)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type == "image_url" and self.role == "user":
                continue  # the pictures: ``image_urls``
            if p.type != "text":
                raise ValueError(f"content parts of type {p.type!r} are not supported by this server"
                                 + (" in a user message" if p.type == "image_url" else ""))
            parts.append(p.text or "")
        return "".join(parts)

    def image_urls(self) -> list[tuple[int, Any]]:
        """(part index, its ``image_url.url``) of each image part, in order."""
        if not isinstance(self.content, list):
            return []
        out = []
        for k, p in enumerate(self.content):
            if p.type == "image_url":
                ref = (p.model_extra or {}).get("image_url")
                out.append((k, ref.get("url") if isinstance(ref, dict) else ref))
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-server's json_object + schema


class _OpenAISamplerFields(BaseModel):
    """Sampling fields shared by chat and text completions: the OpenAI ones, then ``SamplerFields``
    adds the declared samplers as extensions (llama-server's / vLLM's names)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_PARALLEL)
    user: str | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    # extensions (vLLM, llama-server)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=5.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def common_unsupported(self) -> tuple[str, str] | None:
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by this server"
        return None


# The declared samplers beyond the core ones (presence_penalty and frequency_penalty are OpenAI's own),
# each a /v1 field under its own name: None (left out) = its neutral value. The schema carries the
# declared bounds, so the OpenAPI document shows them and a value outside is a 400 naming the field.
EXTENSION_SAMPLERS: tuple[Option, ...] = tuple(o for o in SAMPLERS if o.v1)


def _extension(o: Option) -> tuple[Any, Any]:
    low = {} if o.low is None else {"gt" if o.low_open else "ge": o.low}
    high = {} if o.high is None else {"le": o.high}
    return (o.v1_type or o.type) | None, Field(None, description=o.description, **low, **high)


SamplerFields = create_model(
    "SamplerFields", __base__=_OpenAISamplerFields, __module__=__name__,
    __doc__="Sampling fields shared by chat and text completions: OpenAI's, then the declared samplers as "
            "extensions; a backend that lacks one refuses it by name when it is set.",
    **{o.name: _extension(o) for o in EXTENSION_SAMPLERS})


class ChatCompletionRequest(SamplerFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None  # extension (vLLM, llama-server): e.g. enable_thinking
    # known OpenAI fields this server does not implement: refused when set
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field whose value would change the output in a way this server
        does not implement; None when every field is supported or a no-op. Never ignored."""
        if self.functions or self.function_call not in (None, "none"):
            field = "functions" if self.functions else "function_call"
            return field, "the deprecated functions API is not supported: use tools and tool_choice"
        for name in ("audio", "prediction", "web_search_options"):
            if getattr(self, name) is not None:
                return name, f"{name} is not supported by this server"
        if self.modalities and set(self.modalities) != {"text"}:
            return "modalities", "only text output is supported"
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            return "tool_choice", "tool_choice needs tools"
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or ()]
            if self.tool_choice.function.name not in names:
                return "tool_choice", f"tool_choice names {self.tool_choice.function.name!r}, which is not among the tools"
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        return self.common_unsupported()


class CompletionRequest(SamplerFields):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported by this server"
        if self.suffix:
            return "suffix", "suffix (fill-in-the-middle) is not supported by this server"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of", "best_of is not supported by this server (use n)"
        return self.common_unsupported()

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, v: Any) -> Any:
        """Token ids (OpenAI accepts them) are refused with the fix: they would be another tokenizer's
        ids, as langchain's OpenAIEmbeddings sends tiktoken's by default."""
        if isinstance(v, list) and v and all(type(x) is int or (isinstance(x, list) and x and
                                                                    all(type(t) is int for t in x)) for x in v):
            raise ValueError("token ids are not accepted: this server embeds text, so send the texts themselves "
                             "(langchain's OpenAIEmbeddings: set check_embedding_ctx_length=False, or it sends "
                             "tiktoken's token ids)")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int] = Field(max_length=1 << 20)


def openapi_body(model: type[BaseModel]) -> dict:
    """``model``'s JSON schema with its $defs inlined, as an OpenAPI requestBody (the /v1 routes
    read the raw body themselves, so FastAPI cannot derive it; the schema still documents it and
    lets schema-driven fuzzers such as schemathesis generate requests)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
