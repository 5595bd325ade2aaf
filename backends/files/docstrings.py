"""Text made of Python modules' docstrings: English prose about code that ships with every Python, so
the lab's default texts (Evaluate's held-out text, the importance matrix's calibration text) need no
download and are the same on every machine with the same Python."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence


def docstring_text(modules: Sequence[str], max_chars: int) -> str:
    """Each module's docstring, then its public functions' and classes' longer docstrings (name order),
    module after module in the given order, cut at ``max_chars``. A module this Python lacks is skipped."""
    parts: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a trimmed Python: the text is shorter, still the same on every full one
            continue
        if mod.__doc__:
            parts.append(inspect.cleandoc(mod.__doc__))
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            if attr.startswith("_") or getattr(obj, "__module__", "") != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 80:
                    parts.append(doc)
        if sum(map(len, parts)) > max_chars:
            break
    return "\n\n".join(parts)[:max_chars]
