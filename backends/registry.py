"""The one registry of backend classes. Menus, the settings' choices, the lab's variants and
capability checks are all read from it (no list of backends or quantizations anywhere else).

Importing a backend module is cheap: llama_cpp and torch are imported inside ``load``.
"""

from __future__ import annotations

from collections.abc import Iterable

from backends.base import Backend
from backends.errors import InvalidRequest, ModelLoadError


class BackendRegistry:
    def __init__(self, classes: Iterable[type[Backend]]):
        self._classes: dict[str, type[Backend]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Backend]) -> type[Backend]:
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> type[Backend]:
        try:
            return self._classes[name]
        except KeyError:
            raise ModelLoadError(f"Unknown backend {name!r}: choose one of {', '.join(self._classes)}.") from None

    def supports(self, name: str, capability: str) -> bool:
        return capability in self.get(name).capabilities

    def require(self, name: str, capability: str, what: str) -> type[Backend]:
        cls = self.get(name)
        if capability not in cls.capabilities:
            raise InvalidRequest(f"The {name} backend cannot {what}.")
        return cls

    def menu(self, name: str) -> list[str]:
        """The quantizations offered for ``name`` (an unknown name has none)."""
        cls = self._classes.get(name)
        return list(cls.quantizations) if cls else []

    def default_quantization(self, name: str) -> str | None:
        cls = self._classes.get(name)
        return cls.default_quantization if cls else None

    def normalize(self, name: str, quantization: str | None) -> str:
        return self.get(name).normalize_quantization(quantization)

    def variant_menu(self, capability: str = "logits") -> list[str]:
        """Every "backend:quantization" the lab can load and score."""
        return [f"{cls.name}:{q}" for cls in self._classes.values() if capability in cls.capabilities
                for q in cls.variant_quantizations()]


def default_registry() -> BackendRegistry:
    from backends.llamacpp.backend import LlamaCppBackend
    from backends.remote import RemoteBackend
    from backends.hf.backend import TransformersBackend

    return BackendRegistry([LlamaCppBackend, TransformersBackend, RemoteBackend])
