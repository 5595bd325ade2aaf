"""OpenAI's Responses API (``POST /v1/responses``) as a translation on the pipeline.

In: ``input`` (a string, or items: messages, ``function_call``, ``function_call_output``,
``reasoning``) and ``instructions`` become the Messages of one ChatRequest; Responses' flat function
tools become the chat shape the template and the tool-call parser know; ``tool_choice`` and
``text.format`` become the output constraint (``serving/tool_calls.output_constraint``, as on chat completions).

Out: the reply's typed pieces map to output items: thinking to a ``reasoning`` item, the answer to
a ``message`` item with one ``output_text`` part, each tool call to a ``function_call`` item; the
``response`` object carries them with the usage. Streamed, the events come in the order the openai
SDK's stream helpers expect (created, in_progress, output_item.added, content_part.added,
output_text.delta..., output_text.done, content_part.done, output_item.done, ..., completed), each
written as ``event: <type>`` + ``data: <json>`` with its ``sequence_number`` (``SequencedSSE``).
A response made with ``store`` (OpenAI's default) is kept in memory, bounded (``response_store.py``),
for a later ``previous_response_id``; ``store: false`` keeps nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.base import ChatRequest, Constraint, Message
from backends.errors import InvalidRequest
from serving.api.errors import ApiError, printable
from serving.api.pipeline import Endpoint
from serving.api.stream import EventFormat
from serving.chat_service import ChatStream
from serving.openai.convert import DEFAULT_MAX_TOKENS, refuse_unsupported, sampling_params
from serving.openai.errors import OpenAIErrors
from serving.openai.response_store import ResponseStore
from serving.openai.responses_schema import InputItem, InputPart, NamedFunctionChoice, ResponsesRequest
from serving.pieces import ReplyDelta
from serving.request_json import check_body
from serving.images import check_count, image_from_url
from serving.requests import RequestLimits, chat_request
from serving.tool_calls import ToolCall, output_constraint

TEXT_PARTS = ("input_text", "output_text", "text", "reasoning_text", "summary_text")


# --- in: the body -> one ChatRequest ----------------------------------------------------------------

def _text(content: str | list[InputPart] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for p in content:
        if p.type in ("refusal", "input_image"):  # pictures: ``_pictures``
            continue
        if p.type not in TEXT_PARTS:
            raise InvalidRequest(f"{where}: content parts of type {p.type!r} are not supported by this server "
                                 "(text only).", "input")
        parts.append(p.text or "")
    return "".join(parts)


def _pictures(content: str | list[InputPart] | None, role: str, where: str, limits) -> tuple:
    """The ``input_image`` parts of a message item, decoded and checked (``serving.images``)."""
    if not isinstance(content, list):
        return ()
    images = [(k, p) for k, p in enumerate(content) if p.type == "input_image"]
    if images and role != "user":
        raise InvalidRequest(f"{where}: only a user message can carry input_image parts.", "input")
    image_limits = (limits or RequestLimits()).images
    out = []
    for k, p in images:
        if p.image_url is None:
            raise InvalidRequest(f"{where}.content[{k}]: give the picture as image_url (a data URL); file_id is not "
                                 "supported by this server.", "input")
        out.append(image_from_url(p.image_url, f"{where}.content[{k}].image_url", image_limits, "input"))
    return tuple(out)


def input_items(body: ResponsesRequest, store: ResponseStore) -> list[InputItem]:
    """The whole conversation: the kept one of ``previous_response_id`` (what that response was
    given and what it answered), then ``input``."""
    items = [InputItem(type="message", role="user", content=body.input)] if isinstance(body.input, str) \
        else list(body.input)
    if body.previous_response_id is None:
        return items
    kept = store.get(body.previous_response_id)
    if kept is None:
        raise InvalidRequest(f"Previous response with id {body.previous_response_id!r} not found: this server keeps "
                             "the last responses made with store true, in memory only.", "previous_response_id")
    return [InputItem.model_validate(item) for item in kept] + items


def _messages(instructions: str | None, items: list[InputItem], kept: int = 0, limits=None) -> list[Message]:
    """``instructions`` and the input ``items`` (the first ``kept`` of them a previous response's) as
    Messages: consecutive function calls join the assistant message before them (as a chat template
    expects), their outputs become tool messages, a reasoning item is the thinking of the assistant
    message that follows it."""
    out: list[Message] = []
    if instructions:
        out.append(Message("system", instructions))
    names: dict[str, str] = {}  # call_id -> function name
    thinking: str | None = None
    check_count(sum(p.type == "input_image" for item in items if isinstance(item.content, list) for p in item.content),
                (limits or RequestLimits()).images)  # before any is decoded
    for i, item in enumerate(items):
        where = f"input[{i - kept}]" if i >= kept else "previous_response_id"
        kind = item.kind
        if kind == "message":
            role = "system" if item.role in ("developer", "system") else item.role
            if role is None:
                raise InvalidRequest(f"{where}: a message item needs a role.", "input")
            text = _text(item.content, where)
            out.append(Message(role, text, reasoning=thinking if role == "assistant" else None,
                               images=_pictures(item.content, role, where, limits)))
            thinking = None if role == "assistant" else thinking
        elif kind == "function_call":
            if not item.call_id or not item.name:
                raise InvalidRequest(f"{where}: a function_call item needs call_id and name.", "input")
            try:
                args = json.loads(item.arguments or "{}")
            except (ValueError, RecursionError):
                raise InvalidRequest(f"{where}: the arguments of {item.name!r} are not valid JSON.", "input") from None
            check_body(args, at=("input", i, "arguments"))
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments or "{}"}}
            names[item.call_id] = item.name
            last = out[-1] if out else None
            after = items[i - 1].kind if i else None  # the assistant's text, or its previous call
            if last is not None and last.role == "assistant" and after in ("message", "function_call"):
                out[-1] = replace(last, tool_calls=last.tool_calls + (call,))
            else:
                out.append(Message("assistant", "", tool_calls=(call,), reasoning=thinking))
                thinking = None
        elif kind == "function_call_output":
            if not item.call_id:
                raise InvalidRequest(f"{where}: a function_call_output item needs call_id.", "input")
            output = item.output if isinstance(item.output, str) else _text(item.output, where)
            out.append(Message("tool", output, tool_call_id=item.call_id, name=names.get(item.call_id)))
        elif kind == "reasoning":
            thinking = _text(item.content, where) or _text(item.summary, where) or None
        elif kind == "item_reference":
            raise InvalidRequest(f"{where}: item_reference is not supported by this server: send the item "
                                 "itself.", "input")
        else:
            raise InvalidRequest(f"{where}: input items of type {kind or 'unknown'!r} are not supported by this "
                                 "server (message, function_call, function_call_output, reasoning).", "input")
    if not out or out[-1].role == "system":
        raise InvalidRequest("input: no message to answer: send a user message.", "input")
    return out


def _format_constraint(body: ResponsesRequest) -> Constraint | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint("json_object", param="text")
    if fmt.schema_ is None:
        raise InvalidRequest("text.format: a json_schema format needs schema.", "text")
    return Constraint("json_schema", json.dumps(fmt.schema_), param="text")


@dataclass(frozen=True)
class Plan:
    """What the reply needs of the conversion: the tools offered (chat shape), whether more than
    one call may be returned, the conversation's input items and where to keep the response
    (None: ``store`` false)."""

    tools: tuple[dict, ...] = ()
    parallel: bool = True
    items: tuple[dict, ...] = ()
    store: ResponseStore | None = None


def to_chat_request(body: ResponsesRequest, limits, store: ResponseStore) -> tuple[ChatRequest, Plan]:
    refuse_unsupported(body)
    items = input_items(body, store)
    given = 1 if isinstance(body.input, str) else len(body.input)
    messages = _messages(body.instructions, items, kept=len(items) - given, limits=limits)
    last = messages[-1]
    if last.role == "assistant" and last.tool_calls:
        raise InvalidRequest("input: the last item is a function_call without its function_call_output: send "
                             "the call's output.", "input")
    if last.role == "assistant" and not any(m.role in ("user", "tool") and m.content.strip() for m in messages):
        raise InvalidRequest("input: the last message is the assistant's and there is no user message before it: "
                             "send a user message.", "input")
    tools: tuple[dict, ...] = ()
    if body.tools and body.tool_choice != "none":
        tools = tuple(t.chat_shape() for t in body.tools)
    forced = body.tool_choice == "required" or isinstance(body.tool_choice, NamedFunctionChoice)
    only = body.tool_choice.name if isinstance(body.tool_choice, NamedFunctionChoice) else None
    constraint = output_constraint(tools, forced, only, _format_constraint(body))
    params = sampling_params(body, body.max_output_tokens or body.max_tokens or DEFAULT_MAX_TOKENS)
    request = chat_request(messages, params, body.stop_list(), limits, tools=tools, constraint=constraint,
                           continue_final=last.role == "assistant")
    kept = tuple(i.model_dump(exclude_none=True) for i in items) if body.store is not False else ()
    return request, Plan(tools, body.parallel_tool_calls is not False, kept, store if body.store is not False else None)


# --- out: pieces -> output items, events and the response object ---------------------------------

def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputItem:
    """One output item being built: a ``message`` (one output_text part) or a ``reasoning`` item
    (one reasoning_text part). ``open`` / ``add`` / ``close`` return the stream events."""

    def __init__(self, kind: str, index: int):
        self.kind = kind
        self.index = index
        self.id = _id("msg" if kind == "message" else "rs")
        self.text: list[str] = []
        self.cut = False  # an error ended the response before this item was done

    def part(self) -> dict:
        text = "".join(self.text)
        if self.kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}

    def item(self, status: str | None = None) -> dict:
        status = status or ("incomplete" if self.cut else "completed")
        if self.kind == "message":
            return {"type": "message", "id": self.id, "status": status, "role": "assistant",
                    "content": [] if status == "in_progress" else [self.part()]}
        return {"type": "reasoning", "id": self.id, "status": status, "summary": [],
                "content": [] if status == "in_progress" else [self.part()]}

    def _where(self) -> dict:
        return {"item_id": self.id, "output_index": self.index, "content_index": 0}

    def open(self) -> list[dict]:
        part = self.part()
        return [{"type": "response.output_item.added", "output_index": self.index, "item": self.item("in_progress")},
                {"type": "response.content_part.added", **self._where(), "part": part}]

    def add(self, text: str) -> dict:
        self.text.append(text)
        if self.kind == "message":
            return {"type": "response.output_text.delta", **self._where(), "delta": text, "logprobs": []}
        return {"type": "response.reasoning_text.delta", **self._where(), "delta": text}

    def close(self) -> list[dict]:
        text = "".join(self.text)
        done = ({"type": "response.output_text.done", **self._where(), "text": text, "logprobs": []}
                if self.kind == "message" else {"type": "response.reasoning_text.done", **self._where(), "text": text})
        return [done, {"type": "response.content_part.done", **self._where(), "part": self.part()},
                {"type": "response.output_item.done", "output_index": self.index, "item": self.item()}]


def _call_item(call: ToolCall, item_id: str, arguments: str, status: str) -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name, "arguments": arguments,
            "status": status}


class ResponsesReply:
    """One response built from the pieces of its one stream."""

    def __init__(self, body: ResponsesRequest, plan: Plan, model: str, streams: Sequence[ChatStream]):
        self.request = body
        self.plan = plan
        self.model = model
        self.streams = streams
        self.id = _id("resp")
        self.created = int(time.time())
        self.output: list[OutputItem | dict] = []  # open/closed items, and finished function_call items
        self.current: OutputItem | None = None
        self.finish: str | None = None

    # the response object

    def response(self, status: str, error: dict | None = None) -> dict:
        b = self.request
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else None
        done = status in ("completed", "incomplete", "failed")
        out = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
            "output": [self._item(o) for o in self.output] if done else [],
            "parallel_tool_calls": b.parallel_tool_calls is not False, "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": self.plan.store is not None,
            "temperature": b.temperature,
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": (b.tool_choice.model_dump() if isinstance(b.tool_choice, NamedFunctionChoice)
                            else b.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in b.tools or ()], "top_p": b.top_p,
            "truncation": "disabled", "usage": self.usage() if done else None, "user": b.user,
            "metadata": b.metadata or {},
        }
        return out

    @staticmethod
    def _item(o: OutputItem | dict) -> dict:
        return o.item() if isinstance(o, OutputItem) else o

    def usage(self) -> dict:
        stats = self.streams[0].stats
        return {"input_tokens": stats.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": stats.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": stats.prompt_tokens + stats.completion_tokens}

    def status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    # the pieces

    def head(self) -> list[dict]:
        return [{"type": "response.created", "response": self.response("in_progress")},
                {"type": "response.in_progress", "response": self.response("in_progress")}]

    def _switch(self, kind: str) -> list[dict]:
        """Events that close the open item unless it is a ``kind`` one, and open a ``kind`` one."""
        if self.current is not None and self.current.kind == kind:
            return []
        events = self._close()
        self.current = OutputItem(kind, len(self.output))
        self.output.append(self.current)
        return events + self.current.open()

    def _close(self) -> list[dict]:
        if self.current is None:
            return []
        events, self.current = self.current.close(), None
        return events

    def feed(self, index: int, delta: ReplyDelta) -> Iterator[dict]:
        if delta.finish_reason:
            self.finish = delta.finish_reason
        if delta.reasoning:
            yield from self._switch("reasoning")
            yield self.current.add(delta.reasoning)
        if delta.text:
            yield from self._switch("message")
            yield self.current.add(delta.text)
        calls = list(delta.tool_calls)
        if calls and not self.plan.parallel:
            calls = calls[:1]
        for call in calls:
            yield from self._close()
            yield from self._call(call)

    def _call(self, call: ToolCall) -> Iterator[dict]:
        item_id, index = _id("fc"), len(self.output)
        done = _call_item(call, item_id, call.arguments, "completed")
        self.output.append(done)
        yield {"type": "response.output_item.added", "output_index": index,
               "item": _call_item(call, item_id, "", "in_progress")}
        yield {"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": index,
               "delta": call.arguments}
        yield {"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": index,
               "name": call.name, "arguments": call.arguments}
        yield {"type": "response.output_item.done", "output_index": index, "item": done}

    def _finish_items(self) -> list[dict]:
        """Close the open item; a reply that said nothing still has its (empty) message."""
        events = self._close()
        if not self.output:
            events += self._switch("message") + self._close()
        return events

    def _keep(self) -> None:
        if self.plan.store is not None:
            self.plan.store.put(self.id, list(self.plan.items) + [self._item(o) for o in self.output])

    def tail(self) -> list[dict]:
        events = self._finish_items()
        status = self.status()
        self._keep()
        return events + [{"type": f"response.{status}", "response": self.response(status)}]

    def failed(self, err: ApiError) -> list[dict]:
        if self.current is not None:  # what it said so far, cut short
            self.current.cut = True
            self.current = None
        error = {"code": err.code or err.type, "message": printable(err.message)}
        return [{"type": "response.failed", "response": self.response("failed", error)}]

    def body(self) -> dict:
        self._finish_items()
        self._keep()
        return self.response(self.status())


# --- the endpoint ---------------------------------------------------------------------------------

class ResponsesErrors(OpenAIErrors):
    """OpenAI's error body over HTTP; in a stream, Responses' ``error`` event (then ``response.failed``)."""

    def event(self, err: ApiError) -> dict:
        return {"type": "error", "code": err.code or err.type, "message": printable(err.message),
                "param": err.param}


class SequencedSSE:
    """Responses' server-sent events: ``event: <type>`` and the data with its ``sequence_number``,
    counted in the order the events are written (one counter per response)."""

    def __init__(self):
        self.next = 0

    def __call__(self, event: dict) -> str:
        event = {**event, "sequence_number": self.next}
        self.next += 1
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


class Responses(Endpoint):
    """The /v1/responses endpoint; one per request (its stream numbers its own events), on the
    server's ``store`` of kept responses."""

    schema = ResponsesRequest
    errors = ResponsesErrors()
    label = "responses"  # of its metrics and request log

    def __init__(self, store: ResponseStore):
        self.store = store
        self.format = EventFormat("text/event-stream", SequencedSSE())


    def convert(self, body: ResponsesRequest, pipe: Any) -> tuple[list[ChatRequest], Plan]:
        request, plan = to_chat_request(body, pipe.chat.limits, self.store)
        return [request], plan

    @staticmethod
    def reply(body: ResponsesRequest, plan: Plan, model: str, streams: Sequence[ChatStream]) -> ResponsesReply:
        return ResponsesReply(body, plan, model, streams)
