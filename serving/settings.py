"""Settings: CLI flags <- environment variables (QUANTLAB_*) <- defaults.

As llama-cpp-python's server: ``Settings(ServerSettings, ModelSettings)``, the server half
(``serving.server_settings``: bind, access, limits, logs) and the model half (``serving.model_settings``:
what to load at start and how). The CLI is generated from the two pydantic models, so a flag, its env var
and its default are declared once. Parsing happens in ``app.main()``, never at import.
"""

from __future__ import annotations

import argparse

from pydantic_settings import BaseSettings

from serving.model_settings import ModelSettings
from serving.server_settings import ServerSettings


class Settings(ServerSettings, ModelSettings):
    """Every setting; ``model_part()`` and ``server_part()`` hand one half to the code that needs only it."""

    def model_part(self) -> ModelSettings:
        """The model half alone (what ``ModelSpec.from_settings`` reads), with these values."""
        return _part(ModelSettings, self)

    def server_part(self) -> ServerSettings:
        """The server half alone (what ``create_app`` wires), with these values."""
        return _part(ServerSettings, self)


def _part(half: type[BaseSettings], settings: Settings):
    # model_construct: the values are already validated, and the environment is not read again
    return half.model_construct(**{name: getattr(settings, name) for name in half.model_fields})


HALVES = ((ModelSettings, "model", "what to load at start, and how"),
          (ServerSettings, "server", "where and how the app serves"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_flag(group, name: str, field) -> None:
    env = f"QUANTLAB_{name.upper()}"
    help_ = f"{field.description} [env {env}]"
    if field.annotation is bool:  # on by default: --no-NAME turns it off (--NAME stays accepted)
        action = argparse.BooleanOptionalAction if field.default is True else "store_true"
        group.add_argument(_flag(name), dest=name, action=action, default=None, help=help_)
    elif name == "speculative":
        group.add_argument(_flag(name), dest=name, default=None, choices=["ngram"], help=help_)
    elif name == "allow_remote":
        group.add_argument(_flag(name), dest=name, nargs="+", default=None, help=help_, metavar="PREFIX")
    elif name == "flash_attn":  # --flash-attn [auto|on|off] (alone: on), --no-flash-attn = off
        group.add_argument(_flag(name), dest=name, nargs="?", const="on", default=None, help=help_,
                           metavar="auto|on|off")
        group.add_argument("--no-flash-attn", dest=name, action="store_const", const="off", help="= --flash-attn off")
    elif name == "n_threads":  # --threads auto|N, the name every engine shares; --n-threads kept
        group.add_argument("--threads", _flag(name), dest=name, default=None, help=help_, metavar="auto|N")
    else:
        group.add_argument(_flag(name), dest=name, default=None, help=help_, metavar=name.upper())


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from ``argv`` over the environment over defaults."""
    parser = argparse.ArgumentParser(prog="app.py", description="QuantLab: serve, monitor and compare quantized LLMs.")
    for half, title, description in HALVES:
        group = parser.add_argument_group(title, description)
        for name, field in half.model_fields.items():
            _add_flag(group, name, field)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)
