"""The one Gradio edge: typed errors become gr.Error with a user-facing sentence.

Wrappers keep the wrapped function's signature (Gradio reads it to build the API page) and its
kind (a generator stays a generator function, which is how Gradio decides to stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from backends.errors import BackendError, user_message

log = logging.getLogger("quantlab.ui")
T = TypeVar("T")


def _to_gr_error(exc: BaseException) -> gr.Error:
    if not isinstance(exc, BackendError):
        log.exception("unexpected error in a handler", exc_info=exc)
    return gr.Error(user_message(exc), print_exception=False)


@contextlib.contextmanager
def _user_facing():
    """Let gr.Error through; anything else becomes one (logged when it is not a BackendError)."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as exc:
        raise _to_gr_error(exc) from exc


def gradio_errors(fn):
    """Decorate a handler (plain, async or generator) so BackendErrors reach the user as gr.Error."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            with _user_facing():
                return await fn(*args, **kwargs)

        return async_wrapper
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with _user_facing():
                yield from fn(*args, **kwargs)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _user_facing():
            return fn(*args, **kwargs)

    return wrapper


def client_of(request: gr.Request | None) -> str | None:
    """Who is asking, for the request log and rate limits: the logged-in user, else the address."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return "user:" + request.username
    return request.client.host if request.client else None


async def cancellable(work: Callable[[threading.Event], T]) -> T:
    """``work(cancel)`` in a worker thread, awaited so that Gradio can cancel it: a Stop button,
    ``job.cancel()`` or Gradio dropping the event cancels this coroutine at once, and ``cancel`` is
    set for the work to stop at its next step (a plain handler would run to the end for nobody:
    Gradio cannot interrupt a thread). The context is copied, so gr.Progress works in ``work``."""
    cancel = threading.Event()
    ctx = contextvars.copy_context()
    try:
        return await asyncio.get_running_loop().run_in_executor(None, ctx.run, work, cancel)
    except BaseException:
        cancel.set()
        raise
