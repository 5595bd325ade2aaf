"""Files attached in the chat (the attach box under the message, Gradio /chat's ``files``): read from
Gradio's upload folder only, and shown in the history as the user's message parts (pictures as
thumbnails, other files as links).

Gradio hands a file as a FileData dict (``{"path": ..., "orig_name": ...}``: gradio_client's
``handle_file``, the Chatbot's file parts), a path string (``gr.File(type="filepath")``) or an object
with ``.path`` / ``.name``. Whatever the form, the path must resolve (symlinks followed) to a file
inside Gradio's upload folder that a user uploaded there (Gradio's ``upload_file_set``): an API
caller cannot make the server read any other file. A file
larger than the upload limit is refused before it is read. What is read goes to the chat service as
``serving.attachments.Attachment`` (name and bytes), which decides what it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from backends.errors import InvalidRequest
from serving.attachments import ACCEPTED, MAX_FILE_BYTES, Attachment

MAX_READ_BYTES = max(MAX_FILE_BYTES, 20 * 2**20)  # larger ones are refused by their own limits after reading
FILE_TYPES = ["image", *ACCEPTED]

# Pictures and files pasted into the message box (Ctrl+V of a screenshot) or dropped onto it or the
# chat go into the attach box, exactly as if chosen there: they are handed to its file input, which
# uploads them. A paste that carries text stays a text paste (a spreadsheet's cells come with a
# picture of themselves too); a drop of text is left to the browser. Run once per page (Blocks.load js).
PASTE_JS = """() => {
  if (window.__quantlabPaste) return;
  window.__quantlabPaste = true;
  const inside = (node, ids) => ids.some((id) => { const el = document.getElementById(id); return el && el.contains(node); });
  const pending = [];
  let tries = 0;
  const flush = () => {  // the box has no file input while it redraws after an upload: wait for it
    const input = document.querySelector('#attachments input[type=file]');
    if (!input) { if (++tries < 300) setTimeout(flush, 100); else pending.length = 0; return; }
    tries = 0;
    const dt = new DataTransfer();
    pending.splice(0).forEach((f) => dt.items.add(f));
    input.files = dt.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  };
  const attach = (list) => {
    const files = [...(list || [])].map((f, i) => {
      const ext = (f.type.split('/')[1] || 'bin').replace('jpeg', 'jpg').replace(/[^a-z0-9]/g, '');
      return f.name ? f : new File([f], 'pasted-' + (i + 1) + '.' + ext, {type: f.type});
    });
    if (!files.length) return false;
    const waiting = pending.length > 0;
    pending.push(...files);
    if (!waiting) flush();
    return true;
  };
  const hasFiles = (dt) => !!dt && [...(dt.types || [])].includes('Files');
  document.addEventListener('paste', (e) => {
    const data = e.clipboardData;
    if (!data || !inside(e.target, ['message']) || !data.files || !data.files.length) return;
    if ((data.getData('text/plain') || '').length) return;  // text: an ordinary paste
    if (attach(data.files)) e.preventDefault();
  }, true);
  document.addEventListener('dragover', (e) => {
    if (hasFiles(e.dataTransfer) && inside(e.target, ['message', 'chatbot'])) {
      e.preventDefault(); e.dataTransfer.dropEffect = 'copy';
    }
  }, true);
  document.addEventListener('drop', (e) => {
    if (!hasFiles(e.dataTransfer) || !inside(e.target, ['message', 'chatbot'])) return;
    e.preventDefault(); e.stopPropagation();  // never the browser's "open the dropped file"
    attach(e.dataTransfer.files);
  }, true);
}"""


def upload_root() -> Path:
    return Path(gr.utils.get_upload_folder()).resolve()


def _uploaded(real: Path) -> bool:
    """Whether a user uploaded ``real`` (Gradio's record of uploads). Not every file in the upload
    folder was uploaded: Gradio copies a FileData path an API caller names into that folder before
    the handler runs (it checks where the path lies only once ``launch()`` ran, which a mounted app
    never does), so lying inside the folder proves nothing."""
    from gradio.context import LocalContext

    blocks = LocalContext.blocks.get(None)
    if blocks is None:
        return False
    return any(Path(p).resolve() == real for p in list(blocks.upload_file_set))


def _path_and_name(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value, Path(value).name
    if isinstance(value, dict):
        inner = value.get("file") if isinstance(value.get("file"), dict) else value
        path = inner.get("path")
        if isinstance(path, str) and path:
            return path, str(inner.get("orig_name") or Path(path).name)
        return None
    path = getattr(value, "path", None) or getattr(value, "name", None)
    if isinstance(path, str) and path:
        return path, str(getattr(value, "orig_name", None) or Path(path).name)
    return None


def read(value: Any, root: Path | None = None) -> Attachment:
    """The file ``value`` names, read, or InvalidRequest (not an upload, missing, too large)."""
    found = _path_and_name(value)
    if found is None:
        raise InvalidRequest("files: each file must be an uploaded file (gradio_client's handle_file).", "files")
    path, name = found
    root = root or upload_root()
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidRequest(f"files: {Path(name).name} is not an uploaded file on this server.", "files") from None
    if not real.is_relative_to(root) or not real.is_file() or not _uploaded(real):
        raise InvalidRequest(f"files: {Path(name).name} is not an uploaded file on this server.", "files")
    size = os.path.getsize(real)
    if size > MAX_READ_BYTES:
        raise InvalidRequest(f"files: {Path(name).name} is {size:,} bytes; at most {MAX_READ_BYTES:,}.", "files")
    return Attachment(Path(name).name, real.read_bytes())


def read_all(values: Any, root: Path | None = None) -> list[Attachment]:
    """``read`` for each of ``values`` (None or [] = no files)."""
    if values is None or values == "":
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    return [read(v, root) for v in values]


def file_parts(content: Any) -> list[dict]:
    """The file parts of a Chatbot message's content."""
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, (list, tuple)):
        return []
    return [p for p in content if isinstance(p, dict) and (p.get("type") == "file" or "path" in p)]


def history_with_files(history: Any, root: Path | None = None) -> Any:
    """The Chatbot history with each user file part replaced by the file it names, read
    (``{"type": "attachment", "attachment": ...}``, what ``serving.requests.normalize_history`` takes).
    A file that is gone (uploads are kept an hour) is left out of the prompt."""
    if not isinstance(history, (list, tuple)):
        return history
    out = []
    for item in history:
        if isinstance(item, dict) and item.get("role") == "user" and file_parts(item.get("content")):
            content = item["content"] if isinstance(item["content"], (list, tuple)) else [item["content"]]
            parts = []
            for p in content:
                if p in file_parts(content):
                    try:
                        parts.append({"type": "attachment", "attachment": read(p, root)})
                    except InvalidRequest:
                        continue
                else:
                    parts.append(p)
            item = {**item, "content": parts}
        out.append(item)
    return out


def user_message(text: str, paths: list[str]) -> dict:
    """A user message as the Chatbot shows it: the text, then the attached files (pictures as
    thumbnails). The text comes first so that the message can be edited: the Chatbot's editor
    submits the first part of a message and fails on a file part (Gradio 6.31). The model sees the
    pictures before the text whatever the order here."""
    return _question(text, [{"path": p} for p in paths])


def edited_message(old: Any, text: str) -> dict:
    """The user message ``old`` with its text replaced by ``text`` and its files kept (an edited
    question keeps the pictures and files it was sent with), text first (see ``user_message``)."""
    return _question(text, file_parts(old.get("content") if isinstance(old, dict) else None))


def _question(text: str, files: list) -> dict:
    """A user message: the text alone, or the text (when there is one) then the file parts."""
    if not files:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [text, *files] if text else files}


def text_first(message: Any) -> Any:
    """A user message with its text before its files, as ``user_message`` makes it now (chats saved
    with the files first could not be edited in the Chatbot)."""
    content = message.get("content") if isinstance(message, dict) and message.get("role") == "user" else None
    files = file_parts(content) if isinstance(content, list) else []
    rest = [p for p in content if p not in files] if files else []
    if not rest or content[0] not in files:
        return message
    return {**message, "content": [*rest, *files]}


def texts_first(tree: dict) -> dict:
    """``text_first`` for every question of a conversation tree (``ui/chat_tree.py``)."""
    from ui import chat_tree as ct

    for nid, node in list(tree["nodes"].items()):
        if node["role"] == "user" and any(text_first(m) is not m for m in node["messages"]):
            tree = ct.update_node(tree, nid, messages=[text_first(m) for m in node["messages"]])
    return tree


def uploaded_paths(values: Any) -> list[str]:
    """The upload paths of the attach box's value (what the history shows)."""
    if not values:
        return []
    values = values if isinstance(values, (list, tuple)) else [values]
    return [found[0] for v in values if (found := _path_and_name(v))]


def attach_box() -> gr.File:
    """The attach box under the message: drop or pick pictures and files (or paste or drop them on the
    message box: ``PASTE_JS``)."""
    return gr.File(label="Attach pictures or files (drop them here or on the message, or paste a picture)", file_count="multiple", file_types=FILE_TYPES,
                   type="filepath", elem_id="attachments")


def turn_inputs(user: dict, prior: list) -> tuple[str, list[Attachment], Any]:
    """For a chat turn: the user message's text and files (read), and the history before it with its files."""
    from serving.requests import text_of

    content = user.get("content")
    files = []
    for part in file_parts(content):
        try:
            files.append(read(part))
        except InvalidRequest:
            gr.Warning("An attached file is no longer on the server (uploads are kept an hour): it was left out.")
    return text_of(content), files, history_with_files(prior)


def emptied(job: Any, files: Any) -> Any:
    """The attach box after a send: empty once the message took its files (a refused send keeps them)."""
    return None if job else gr.skip()


def from_pil(image: Any, name: str = "picture.png") -> Attachment:
    """A picture a gr.Image (type="pil") holds, as a PNG attachment (checked again like any other)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Attachment(name, buf.getvalue())
