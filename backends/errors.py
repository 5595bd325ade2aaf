"""Typed errors. Every layer raises these; exactly one edge per transport converts them
(``ui/edge.py`` to ``gr.Error``, ``serving/openai/errors.py`` to OpenAI-style JSON).

Each error carries a user-facing sentence (``str(exc)``), an HTTP status and an OpenAI error type.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class: something the user should be told about in one sentence. A subclass states how the
    edges report it in its class line: ``status`` (HTTP), ``kind`` (the OpenAI error type), ``code``."""

    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init_subclass__(cls, status: int | None = None, kind: str | None = None, code: str | None = None, **kw):
        super().__init_subclass__(**kw)
        cls.http_status = status or cls.http_status
        cls.error_type = kind or cls.error_type
        cls.code = code or cls.code


class InvalidRequest(BackendError, status=400, kind="invalid_request_error"):
    """A parameter is out of range or malformed."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest, code="context_length_exceeded"):
    """The prompt and the reply cannot fit the model's context."""


class PayloadTooLarge(InvalidRequest, status=413, code="payload_too_large"):
    """A request body over --max-body-bytes."""


class ModelLoadError(BackendError, status=400, kind="invalid_request_error", code="model_load_error"):
    """The model could not be loaded (missing file, not a model, incompatible options)."""


class ModelNotFound(ModelLoadError, status=404, code="model_not_found"):
    """No model of that name here."""


class UnsupportedQuantization(ModelLoadError, code="unsupported_quantization"):
    """The backend cannot make or run that quantization here."""


class ModelNotResident(BackendError, status=400, kind="invalid_request_error", code="model_not_loaded"):
    """A request names a servable model that is not loaded, and the server loads only when asked
    (--no-models-autoload)."""


class OutOfMemory(BackendError, status=507, kind="server_error", code="out_of_memory"):
    """Loading or running would not fit the memory there is."""


class BackendUnavailable(BackendError, status=503, kind="service_unavailable", code="backend_unavailable"):
    """No model is ready, or a remote engine cannot be reached."""


class NoModelLoaded(BackendUnavailable, code="no_model_loaded"):
    """Nothing is loaded to answer with."""

    def __init__(self, message: str = "No model is loaded. Load one in the Model tab (or POST /load_model) first."):
        super().__init__(message)


class ModelUnloaded(BackendUnavailable, code="model_unloaded"):
    """A running generation was cut because its model was unloaded (not a finished reply)."""


class PoolFull(BackendUnavailable, code="pool_full"):
    """A model must be loaded but every place under --models-max is held by a model running requests."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerShuttingDown(BackendUnavailable, code="server_shutting_down"):
    """The server stopped a generation because it is shutting down (past --shutdown-timeout)."""


class Busy(BackendError, status=429, kind="rate_limit_error", code="rate_limited"):
    """Too many requests for this client (rate limit) or the server (queue full)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(BackendError, status=499, kind="cancelled", code="cancelled"):
    """Work stopped because its caller went away or asked it to stop (Stop, a disconnect, a shutdown).
    499 is nginx's "client closed request": nobody is normally left to read it."""


def user_message(exc: BaseException) -> str:
    """The sentence shown for an error (typed errors carry their own)."""
    if isinstance(exc, BackendError):
        return str(exc)
    return f"Internal error ({type(exc).__name__}). The server is still running; see its log for details."
