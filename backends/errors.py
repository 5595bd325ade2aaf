"""Typed errors. Every layer raises these; exactly one edge per transport converts them
(``ui/edge.py`` to ``gr.Error``, ``serving/openai_api.py`` to OpenAI-style JSON).

Each error carries a user-facing sentence (``str(exc)``), an HTTP status and an OpenAI error type.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class: something the user should be told about in one sentence."""

    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None


class InvalidRequest(BackendError):
    """A parameter is out of range or malformed."""

    http_status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    http_status = 400
    code = "context_length_exceeded"


class ModelLoadError(BackendError):
    """The model could not be loaded (missing file, not a model, incompatible options)."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "model_load_error"


class ModelNotFound(ModelLoadError):
    http_status = 404
    code = "model_not_found"


class ModelNotResident(BackendError):
    """A request names a servable model that is not loaded, and the server loads only when asked
    (--no-models-autoload)."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "model_not_loaded"


class UnsupportedQuantization(ModelLoadError):
    code = "unsupported_quantization"


class OutOfMemory(BackendError):
    http_status = 507
    error_type = "server_error"
    code = "out_of_memory"


class BackendUnavailable(BackendError):
    """No model is ready, or a remote engine cannot be reached."""

    http_status = 503
    error_type = "service_unavailable"
    code = "backend_unavailable"


class NoModelLoaded(BackendUnavailable):
    code = "no_model_loaded"

    def __init__(self, message: str = "No model is loaded. Load one in the Model tab (or POST /load_model) first."):
        super().__init__(message)


class ModelUnloaded(BackendUnavailable):
    """A running generation was cut because its model was unloaded (not a finished reply)."""

    code = "model_unloaded"


class PoolFull(BackendUnavailable):
    """A model must be loaded but every place under --models-max is held by a model running requests."""

    code = "pool_full"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerShuttingDown(BackendUnavailable):
    """The server stopped a generation because it is shutting down (past --shutdown-timeout)."""

    code = "server_shutting_down"


class PayloadTooLarge(InvalidRequest):
    """A request body over --max-body-bytes."""

    http_status = 413
    code = "payload_too_large"


class Busy(BackendError):
    """Too many requests for this client (rate limit) or the server (queue full)."""

    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(BackendError):
    """Work stopped because its caller went away or asked it to stop (Stop, a disconnect, a shutdown)."""

    http_status = 499  # nginx's "client closed request": nobody is normally left to read it
    error_type = "cancelled"
    code = "cancelled"


def user_message(exc: BaseException) -> str:
    """The sentence shown for an error (typed errors carry their own)."""
    if isinstance(exc, BackendError):
        return str(exc)
    return f"Internal error ({type(exc).__name__}). The server is still running; see its log for details."
