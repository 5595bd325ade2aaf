"""The Hugging Face Space configuration: README front matter consistent with what we ship."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from serving.zerogpu import gpu_task

ROOT = Path(__file__).resolve().parent.parent


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(m.group(1))


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def test_front_matter_matches_requirements_and_entry_point():
    fm = front_matter()
    assert fm["sdk"] == "gradio"
    assert str(fm["sdk_version"]) == pinned("gradio")
    assert (ROOT / fm["app_file"]).is_file() and fm["app_file"] == "app.py"
    assert str(fm["python_version"]) == "3.11"
    assert fm["suggested_hardware"] in ("cpu-basic", "cpu-upgrade", "t4-small", "zero-a10g", "a10g-small")
    assert len(fm.get("short_description", "")) <= 60  # the Hub's limit
    assert set(fm) >= {"title", "emoji", "colorFrom", "colorTo"}


def test_zerogpu_decorator_is_the_identity_without_spaces():
    def f(x):
        return x + 1

    try:
        import spaces  # noqa: F401
    except ImportError:
        assert gpu_task(f) is f
    else:  # on a Space: the function is wrapped and still works
        assert gpu_task(f)(1) == 2
