"""Registers the Gradio API endpoints so the "Use via API" page describes every parameter.

Gradio 6 prints, for each parameter, "The input value that is provided in the <label> <Component>
component." followed by the component's ``additional_description``; for ``gr.api`` endpoints the
label is an ordinal ("1st") and the description empty. ``described_api`` names each parameter and
gives it the line from the handler's docstring ``Args:`` section (one ``name: text`` line each, the
format Gradio's own ``utils.get_function_description`` reads), and refuses to register a handler
that leaves a parameter undescribed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.utils import get_function_description


def parameter_descriptions(fn: Callable) -> dict[str, str]:
    """{parameter: description} from ``fn``'s docstring Args (the wrapped function's, through
    functools.wraps); gr.Request and gr.Progress parameters are not API inputs and are left out."""
    _, params, _ = get_function_description(fn)
    return {name: text for name, text in params.items() if name not in ("request", "progress")}


def described_api(fn: Callable, *, api_name: str, **kwargs: Any):
    """``gr.api(fn, api_name=..., **kwargs)``, then each input's label and description from the
    docstring. ValueError names any parameter without a description (so none can ship undescribed)."""
    described = parameter_descriptions(fn)
    missing = [name for name, text in described.items() if not text]
    if missing:
        raise ValueError(f"/{api_name}: describe {', '.join(missing)} in the handler's docstring Args")
    dep = gr.api(fn, api_name=api_name, **kwargs)
    blocks = gr.context.get_blocks_context()
    block_fn = blocks.fns[dep["id"]]
    for component, (name, text) in zip(block_fn.inputs, described.items(), strict=False):
        component.label = name
        sentence = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")  # follows Gradio's own sentence
        component._api_info = {**component._api_info, "additional_description": sentence}
    return dep


def fill_trailing_defaults(blocks: gr.Blocks) -> None:
    """Let plain-HTTP callers (POST /gradio_api/call/<name>) leave out trailing parameters that have a
    default, as gradio_client callers can: Gradio itself wants every input, so a 9-value /chat call
    from before the extra samplers would fail. Missing trailing inputs of a ``gr.api`` endpoint get
    the handler's defaults; a missing required one still fails as before."""
    import inspect

    original = blocks.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        wanted = block_fn.inputs
        if inputs is not None and len(inputs) < len(wanted) and block_fn.fn is not None:
            try:
                params = [p for p in inspect.signature(block_fn.fn).parameters.values()
                          if p.name not in ("request", "progress")]
            except (TypeError, ValueError):
                params = []
            if len(params) == len(wanted) and all(p.default is not inspect.Parameter.empty
                                                  for p in params[len(inputs):]):
                inputs = list(inputs) + [p.default for p in params[len(inputs):]]
        return await original(block_fn, inputs, state, explicit_call)

    blocks.preprocess_data = preprocess_data


# --- the "Use via API" page's snippets of the streaming endpoints ------------------------------------
# Gradio 6.31 writes every endpoint's example on the server (gradio_client.snippet, called by
# gradio.routes' /info handler) as ``client.predict(...)``, which waits for a streaming endpoint's
# last item, and offers no hook to change it. ``StreamingSnippets`` rewrites the /info answer that
# the page reads: a streaming endpoint's Python and JavaScript examples use ``submit`` and iterate.

STREAM_NOTE = "# streams: each item is the output so far; job.result() is the last one"


def streaming_python(snippet: str) -> str:
    """A Python snippet ``result = client.predict(...)`` / ``print(result)`` as ``job = client.submit(...)``
    iterated; unchanged when it does not have that shape."""
    if "result = client.predict(" not in snippet or not snippet.rstrip().endswith("print(result)"):
        return snippet
    head = snippet.rstrip()[: -len("print(result)")].replace("result = client.predict(", "job = client.submit(", 1)
    return f"{head}for out in job:  {STREAM_NOTE}\n\tprint(out)\nresult = job.result()\nprint(result)"


def streaming_js(snippet: str) -> str:
    """The JavaScript counterpart: ``client.submit`` and ``for await`` over its messages."""
    if "const result = await client.predict(" not in snippet or "console.log(result.data);" not in snippet:
        return snippet
    head = snippet.replace("const result = await client.predict(", "const job = client.submit(", 1)
    head = head[: head.rindex("console.log(result.data);")]
    return (f"{head}for await (const msg of job) {{  // streams: each \"data\" message is the output so far\n"
            "\tif (msg.type === \"data\") console.log(msg.data);\n}")


def rewrite_info(info: dict, streaming: set[str]) -> dict:
    """``info`` (Gradio's /info answer) with the snippets of the endpoints named in ``streaming``
    ("/chat", ...) using ``submit``."""
    for name, endpoint in (info.get("named_endpoints") or {}).items():
        snippets = endpoint.get("code_snippets") if isinstance(endpoint, dict) else None
        if name in streaming and isinstance(snippets, dict):
            if isinstance(snippets.get("python"), str):
                snippets["python"] = streaming_python(snippets["python"])
            if isinstance(snippets.get("javascript"), str):
                snippets["javascript"] = streaming_js(snippets["javascript"])
    return info


class StreamingSnippets:
    """ASGI middleware: GET /gradio_api/info answered with ``rewrite_info`` applied (the endpoints whose
    function Gradio runs as a generator stream). Takes the Blocks as an object."""

    PATHS = ("/gradio_api/info", "/gradio_api/info/")

    def __init__(self, app, blocks):
        self.app = app
        self.blocks = blocks

    def streaming(self) -> set[str]:
        return {f"/{fn.api_name}" for fn in self.blocks.fns.values()
                if getattr(fn, "api_name", None) and getattr(fn, "types_generator", False)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        import json

        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    await finish()
                return
            await send(message)

        async def finish():
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            plain = start.get("status") == 200 and not any(k.lower() == b"content-encoding" for k, _ in headers)
            if plain:
                try:
                    body = json.dumps(rewrite_info(json.loads(body), self.streaming())).encode("utf-8")
                except (ValueError, TypeError, AttributeError):
                    pass  # not the JSON expected: sent as it came
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
