"""Files attached to a chat message (the chat UI, Gradio's /chat ``files``): pictures, which a vision
model sees (``serving.images`` decodes and checks them), and text files (plain text, Markdown, code,
CSV; PDF through pypdf's text extraction), which go to the model as a context block naming the file,
before the message's text:

    <file name="notes.md">
    ...the file's text...
    </file>

An ``Attachment`` is already read (the transport reads it from where it may: the UI from Gradio's
upload folder only, ``ui/attachments.py``); here it is only classified, checked and turned into the
message's pictures and text. Limits: the pictures' (``ImageLimits``), ``MAX_FILE_BYTES`` per text
file read, and the conversation's character limit (--max-prompt-chars) over the text it makes.
Nothing here writes to disk or imports gradio.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from backends.base import ImageInput
from backends.errors import InvalidRequest
from serving.images import ImageLimits, check_count, decode_image

MAX_FILE_BYTES = 5 * 2**20
MAX_ATTACHMENTS = 16
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".xml", ".html", ".htm", ".css", ".log", ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".c", ".h", ".cc", ".cpp",
    ".hpp", ".cs", ".go", ".rs", ".rb", ".php", ".sh", ".bash", ".sql", ".r", ".kt", ".swift", ".scala", ".lua",
    ".pl", ".m", ".tex", ".ipynb", ".env", ".dockerfile", ".mk", ".gradle", ".vue", ".svelte"})
PDF_SUFFIX = ".pdf"
ACCEPTED = sorted(IMAGE_SUFFIXES | TEXT_SUFFIXES | {PDF_SUFFIX})


@dataclass(frozen=True, repr=False)
class Attachment:
    """A file as the user sent it: its base name and its bytes."""

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        return PurePath(self.name).suffix.lower()

    @property
    def is_image(self) -> bool:
        return self.suffix in IMAGE_SUFFIXES

    def __repr__(self) -> str:
        return f"Attachment({self.name!r}, {len(self.data):,} bytes)"


def kind_of(name: str) -> str:
    """"image", "text" or "pdf" for a file name this server takes; InvalidRequest naming the accepted kinds."""
    suffix = PurePath(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == PDF_SUFFIX:
        return "pdf"
    if suffix in TEXT_SUFFIXES or (not suffix and PurePath(name).name.lower() in ("makefile", "dockerfile", "readme")):
        return "text"
    raise InvalidRequest(f"{name}: this kind of file cannot be attached; attach a picture (PNG, JPEG, WebP, GIF, BMP), "
                         "a text, Markdown, code or CSV file, or a PDF.", "files")


def file_text(att: Attachment, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The text of a text file or PDF attachment, or InvalidRequest saying why not."""
    if len(att.data) > max_bytes:
        raise InvalidRequest(f"{att.name} is {len(att.data):,} bytes; a file attached as text may be at most "
                             f"{max_bytes:,} bytes.", "files")
    if kind_of(att.name) == "pdf":
        return pdf_text(att)
    if b"\x00" in att.data[:8192]:
        raise InvalidRequest(f"{att.name} is not a text file (it holds binary data).", "files")
    try:
        return att.data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return att.data.decode("latin-1")


def pdf_text(att: Attachment) -> str:
    """The text pypdf extracts from every page (a scanned PDF has none: refused, saying so)."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise InvalidRequest("PDF files need the pypdf package on the server: pip install -r requirements.txt",
                             "files") from None
    try:
        reader = PdfReader(io.BytesIO(att.data))
        if reader.is_encrypted:
            raise InvalidRequest(f"{att.name} is encrypted: attach an unlocked PDF.", "files")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except InvalidRequest:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise InvalidRequest(f"{att.name} is not a PDF this server can read ({type(exc).__name__}).", "files") from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise InvalidRequest(f"{att.name} has no text to extract (a scanned PDF?): attach its pages as pictures.",
                             "files")
    return text


def context_block(name: str, text: str) -> str:
    safe = PurePath(name).name.replace('"', "'")
    return f'<file name="{safe}">\n{text.rstrip()}\n</file>'


def split(attachments: Sequence[Attachment], limits: ImageLimits | None = None) -> tuple[str, tuple[ImageInput, ...]]:
    """(the context blocks of the text files, joined; the decoded pictures) of one message's attachments."""
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidRequest(f"At most {MAX_ATTACHMENTS} files can be attached to a message.", "files")
    pictures = [a for a in attachments if kind_of(a.name) == "image"]
    check_count(len(pictures), limits)  # before any is decoded
    blocks = [context_block(a.name, file_text(a)) for a in attachments if kind_of(a.name) != "image"]
    images = tuple(decode_image(a.data, f"files: {a.name}", limits, "files") for a in pictures)
    return "\n\n".join(blocks), images


def with_context(text: str, blocks: str) -> str:
    """The message's text after its files' context blocks."""
    return f"{blocks}\n\n{text}" if blocks and text else (blocks or text)
