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
