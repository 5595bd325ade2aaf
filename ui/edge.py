"""The one Gradio edge: typed errors become gr.Error with a user-facing sentence.

Wrappers keep the wrapped function's signature (Gradio reads it to build the API page) and its
kind (a generator stays a generator function, which is how Gradio decides to stream).
"""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from backends.errors import BackendError, user_message

log = logging.getLogger("quantlab.ui")


def _to_gr_error(exc: BaseException) -> gr.Error:
    if not isinstance(exc, BackendError):
        log.exception("unexpected error in a handler", exc_info=exc)
    return gr.Error(user_message(exc), print_exception=False)


def gradio_errors(fn):
    """Decorate a handler (plain or generator) so BackendErrors reach the user as gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _to_gr_error(exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _to_gr_error(exc) from exc

    return wrapper


def client_of(request: gr.Request | None) -> str | None:
    """Who is asking, for the request log and rate limits: the logged-in user, else the address."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return "user:" + request.username
    return request.client.host if request.client else None
