"""The Chat section: past chats, the streaming chatbot with its message actions (edit, regenerate
with versions, continue, remove, replace, stop), the context counter, system prompt and sampling.

The handlers are in ``ui/chat_actions.py``; the turn logic in ``ui/chat_turns.py``; the conversation
tree (every edited question and regenerated reply kept as a branch, "◀ n/m ▶" on each message that
has siblings) in ``ui/chat_tree.py``; replies that go on generating across a reload in
``ui/chat_live.py``; the past chats' store in ``ui/chat_history.py``. Chats live in the browser
(gr.BrowserState), or with ``--chat-dir`` on the server per logged-in user (``serving/chat_store.py``).
A turn's question and its pending reply are saved as soon as it starts, so a reload mid-reply finds
them and shows the reply still streaming, or finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from backends.files.sources import default_cache_dir
from serving.auth import is_personal
from serving.chat_store import ChatStore, browser_secret
from serving.services import Services
from serving.zerogpu import gpu_task
from ui import attachments
from ui import chat_history as past
from ui import chat_tree as ct
from ui.chat_exports import ChatExports
from ui.chat_actions import ChatActions, toasting
from ui.model_picker import build_model_picker, picker_choices
from ui.sampling import SamplingColumn, build_sampling

EXAMPLES = [["Explain what 4-bit quantization does to a language model, in three sentences."],
            ["Write a Python function that checks whether a string is a palindrome."],
            ["Give me three ideas for a weekend project with a Raspberry Pi."]]

# Esc stops, Ctrl+Enter regenerates, Alt+Enter continues (while the Chat tab is on screen); after
# Ctrl+Enter the chat scrolls to its end. Also draws each message's "◀ n/m ▶" from the branch map
# (#branch-map: one entry per Chatbot row, see chat_tree.row_map) and sends a click as
# "<node> <-1|1>" through the hidden #branch-switch button.
KEYS_JS = """() => {
  if (window.__quantlabChatKeys) return;
  window.__quantlabChatKeys = true;
  const toEnd = () => setTimeout(() => {
    document.querySelectorAll('#chatbot .bubble-wrap').forEach(w => { w.scrollTop = w.scrollHeight; });
    const box = document.getElementById('message');
    if (box) box.scrollIntoView({block: 'nearest'});
  }, 50);
  document.addEventListener('keydown', (e) => {
    const press = (id) => {
      const b = document.getElementById(id);
      if (!b || b.offsetParent === null) return false;
      e.preventDefault(); e.stopPropagation(); b.click(); return true;
    };
    if (e.key === 'Escape') press('stop');
    else if (e.key === 'Enter' && e.altKey) press('continue');
    else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { if (press('regenerate')) toEnd(); }
  }, true);
  const arrows = () => {
    const box = document.querySelector('#branch-map textarea');
    let map = [];
    try { map = JSON.parse((box && box.value) || '[]') || []; } catch (err) { map = []; }
    const rows = [...document.querySelectorAll('#chatbot .message-row')];
    rows.forEach((row, r) => {
      const want = map[r];
      let bar = row.querySelector(':scope > .branch-arrows');
      const key = want ? want.node + ':' + want.i + '/' + want.n : '';
      if (!want) { if (bar) bar.remove(); return; }
      if (bar && bar.dataset.key === key) return;
      if (!bar) { bar = document.createElement('div'); bar.className = 'branch-arrows'; row.appendChild(bar); }
      bar.dataset.key = key;
      bar.innerHTML = '';
      const button = (text, label, step, off) => {
        const b = document.createElement('button');
        b.textContent = text; b.setAttribute('aria-label', label); b.disabled = off;
        b.addEventListener('click', (ev) => {
          ev.preventDefault(); ev.stopPropagation();
          window.__quantlabBranch = want.node + ' ' + step;
          document.getElementById('branch-switch').click();
        });
        return b;
      };
      const label = document.createElement('span');
      label.textContent = want.i + '/' + want.n;
      label.setAttribute('aria-label', 'version ' + want.i + ' of ' + want.n);
      bar.append(button('◀', 'Previous version', -1, want.i <= 1), label,
                 button('▶', 'Next version', 1, want.i >= want.n));
    });
  };
  window.__quantlabArrows = arrows;
  const watch = () => {
    const chat = document.getElementById('chatbot');
    if (!chat) { setTimeout(watch, 300); return; }
    new MutationObserver(() => arrows()).observe(chat, {childList: true, subtree: true});
    arrows();
  };
  watch();
}"""

# Room for the inline editor, the per-message arrows, the hidden channel to the page's script.
CHAT_CSS = """<style>
.ql-hidden { display: none !important; }
#chatbot .message-row textarea { min-height: 10em !important; width: min(48em, 70vw) !important; resize: vertical; }
#chatbot .message-row:has(textarea) .message { width: 100%; max-width: 100%; }
#chatbot .message-row { flex-wrap: wrap; }
#chatbot .branch-arrows { display: flex; align-items: center; gap: 4px; font-size: 0.85em; width: 100%;
  opacity: 0.8; }
#chatbot .user-row .branch-arrows { justify-content: flex-end; }
#chatbot .branch-arrows button { border: 1px solid var(--border-color-primary); border-radius: 4px;
  padding: 0 6px; background: var(--background-fill-secondary); cursor: pointer; }
#chatbot .branch-arrows button:disabled { opacity: 0.35; cursor: default; }
</style>"""


@dataclass
class ChatSection:
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    clear: gr.Button
    stats: gr.Markdown
    params: list  # system prompt + sampling components, in /chat's order
    saved: gr.BrowserState
    sampling: SamplingColumn
    wire_load: object = None  # (blocks) -> None: the page-load events (restore the chat, keyboard keys)


def build_chat(h: Services, slots: int = 1, chat_dir: Path | None = None) -> ChatSection:
    actions = ChatActions(h)
    disk = ChatStore(chat_dir) if chat_dir else None
    exports = ChatExports(gr.utils.get_upload_folder())  # Gradio's cache: served from there, never copied
    with gr.Row():
        with gr.Column(scale=1, min_width=210, elem_id="past-chats"):
            new = gr.Button("New chat", size="sm", variant="primary", elem_id="new-chat")
            search = gr.Textbox(placeholder="Search chats", show_label=False, elem_id="chat-search")
            chat_list = gr.Radio(choices=[], label="Past chats", elem_id="chat-list")
            title = gr.Textbox(label="Name of this chat", elem_id="chat-title")
            with gr.Row():
                rename = gr.Button("Rename", size="sm", elem_id="rename-chat")
                delete = gr.Button("Delete chat", size="sm", variant="stop", elem_id="delete-chat")
            with gr.Group(visible=False, elem_id="confirm-delete") as confirm_row:  # deleting asks first
                confirm_text = gr.Markdown("Delete this chat? This cannot be undone.")
                with gr.Row():
                    confirm_delete = gr.Button("Yes, delete this chat", size="sm", variant="stop",
                                               elem_id="confirm-delete-chat")
                    cancel_delete = gr.Button("Keep it", size="sm", elem_id="cancel-delete-chat")
            export = gr.DownloadButton("Export JSON", size="sm", elem_id="export")
            export_all = gr.DownloadButton("Export all chats", size="sm", elem_id="export-all")
            import_ = gr.UploadButton("Import JSON", size="sm", file_types=[".json"], type="filepath",
                                      elem_id="import")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=480, buttons=["copy", "copy_all"], elem_id="chatbot",
                                 editable="all")
            gr.HTML(CHAT_CSS, padding=False, elem_classes=["ql-hidden"])
            branch_map = gr.Textbox("[]", elem_id="branch-map", elem_classes=["ql-hidden"], show_label=False)
            branch_cmd = gr.Textbox("", elem_id="branch-command", elem_classes=["ql-hidden"], show_label=False)
            branch_switch = gr.Button("Switch version", elem_id="branch-switch", elem_classes=["ql-hidden"])
            resume = gr.Button("Follow the reply", elem_id="chat-resume", elem_classes=["ql-hidden"])
            with gr.Row(visible=False, elem_id="versions") as version_row:
                prev = gr.Button("◀", size="sm", min_width=40, scale=0, elem_id="version-prev")
                version_label = gr.Markdown(elem_id="version-label")
                nxt = gr.Button("▶", size="sm", min_width=40, scale=0, elem_id="version-next")
            with gr.Row():
                message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     lines=1, max_lines=8, elem_id="message", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
            files = attachments.attach_box()  # pictures and files for the next message (ui/attachments.py)
            with gr.Row():
                regenerate = gr.Button("Regenerate", size="sm", min_width=70, elem_id="regenerate")
                cont = gr.Button("Continue", size="sm", min_width=70, elem_id="continue")
                remove = gr.Button("Remove last", size="sm", min_width=70, elem_id="remove-last")
                replace = gr.Button("Replace last reply", size="sm", min_width=70, elem_id="replace-last")
                clear = gr.Button("Clear", size="sm", min_width=70, elem_id="clear")
            with gr.Row():
                stats = gr.Markdown(elem_id="chat-stats")
                tokens = gr.Markdown(elem_id="chat-tokens")
            gr.Markdown("Keys: **Esc** stops · **Ctrl+Enter** regenerates · **Alt+Enter** continues · "
                        "edit a question or regenerate a reply to branch the chat; ◀ ▶ under a message switches versions.",
                        elem_id="chat-keys")
            gr.Examples(EXAMPLES, inputs=message, label="Try")
        with gr.Column(scale=2, min_width=260):
            model = build_model_picker(h)
            sampling = build_sampling()
    params = [*sampling.params, model]  # system prompt + sampling components + model, in /chat's order
    default_system = sampling.system.value or ""  # what a new chat starts from

    tree = gr.State(ct.empty_tree())  # the conversation tree (ui/chat_tree.py); the Chatbot shows its path
    focus = gr.State(None)  # the turn whose versions the bar shows (None = the last)
    job = gr.State(None)  # what the running turn does (ChatActions.prepare_*)
    current = gr.State(None)  # the id of the chat on screen in the store
    # Every chat of this browser (ui/chat_history.py), encrypted with a key kept in the cache folder
    # so a server restart keeps them readable.
    saved = gr.BrowserState(past.empty_store(), storage_key="quantlab-chat",
                            secret=browser_secret(h.manager.cache_dir or default_cache_dir()))

    private = {"api_visibility": "private"}
    model_bound = {"concurrency_id": "generate", "concurrency_limit": slots, "api_visibility": "private"}
    turn_fn = actions.run_turn
    run = gpu_task(turn_fn)
    # on ZeroGPU the turn runs in the GPU's process: there a reply cannot outlive its event
    actions.keep_on_disconnect = run is turn_fn
    run_outputs = [chatbot, message, stats, tree, tokens]
    prep_outputs = [job, chatbot, message, tree]

    # --- the store: save after every change, restore on page load -------------------------------

    # Gradio hands a handler the gr.Request only through a positional parameter annotated with it (not
    # one after *values): the handlers below that take the settings as *values have it first.

    def user_of(request: gr.Request | None) -> str | None:
        """The logged-in user whose chats ``--chat-dir`` keeps; None (the browser keeps them) without
        --chat-dir, without a login, or for the API key's shared identity: anonymous visitors never
        share a file on the server."""
        user = getattr(request, "username", None) if disk is not None and request is not None else None
        return user if isinstance(user, str) and user and is_personal(user) else None

    def export_files(store: dict, chat_id: str | None, request: gr.Request | None) -> tuple[str, str]:
        return exports.write(getattr(request, "session_hash", None), store, chat_id)

    def listing(store: dict, chat_id: str | None, query: str = ""):
        return gr.Radio(choices=past.chat_choices(store, query), value=chat_id)

    @toasting(6)
    def sync(request: gr.Request, history, tree_, store, chat_id, query, *values):
        """Save the chat on screen (with its settings) into the store; refresh the list and exports.
        Which chat is on screen is never changed here (a save that lands after a switch must not
        switch back): only a chat saved for the first time gets its id."""
        store, saved_id = past.save_chat(store, chat_id, history or [], tree_, list(values))
        user = user_of(request)
        if user:
            disk.save(user, store)
        one, every = export_files(store, saved_id, request)
        chat = past.get_chat(store, saved_id)
        return (store, saved_id if chat_id is None else gr.skip(), one, every, listing(store, saved_id, query),
                chat["title"])

    sync_inputs = [chatbot, tree, saved, current, search, *params]
    sync_outputs = [saved, current, export, export_all, chat_list, title]

    def show_chat(store: dict, chat_id: str | None, request: gr.Request | None, query: str = ""):
        """Put a stored chat on screen: its tree's visible path (a reply still generating or ended
        since it was saved brought up to date), its settings (when they fit this page)."""
        chat = past.get_chat(store, chat_id) or past.make_chat()
        shown = attachments.texts_first(actions.resolve(past.tree_of(chat)))
        users = ct.user_ids(shown)
        line = actions.stats_line(shown, ct.reply_id(shown, len(users) - 1)) if users else ""
        values = chat.get("params") or []
        # settings saved before the newer parameters: those take the page's (trailing, as the API adds them)
        restored = list(values) + [gr.skip()] * (len(params) - len(values)) if values else [gr.skip()] * len(params)
        restored = restored if len(restored) == len(params) else [gr.skip()] * len(params)
        if values and len(values) < len(params):  # saved before the model picker: the chat's own model
            restored[-1] = ""
        one, every = export_files(store, chat_id, request)
        return (ct.history(shown), shown, chat_id, None, line, "", one, every,
                listing(store, chat_id, query), chat["title"] if chat_id else "", *restored)

    show_outputs = [chatbot, tree, current, focus, stats, tokens, export, export_all, chat_list, title, *params]

    @toasting(len(show_outputs) + 1)
    def restore(store, request: gr.Request = None):
        user = user_of(request)
        if user:
            store = disk.load(user)
        if isinstance(store, list) and store:  # a conversation saved before past chats existed
            store, _ = past.import_chats(None, store)
        store = past.valid_store(store)
        return (store, *show_chat(store, store["current"], request))

    @toasting(len(show_outputs) + 1)
    def switch(request: gr.Request, chat_id, history, tree_, store, current_id, query, *values):
        if chat_id == current_id:
            return tuple(gr.skip() for _ in range(len(show_outputs) + 1))
        if current_id or history:  # keep the chat being left, settings included
            store, _ = past.save_chat(store, current_id, history or [], tree_, list(values))
        store = {**past.valid_store(store), "current": chat_id}
        user = user_of(request)
        if user:
            disk.save(user, store)
        return (store, *show_chat(store, chat_id, request, query))

    @toasting(len(show_outputs) + 1)
    def start_new(request: gr.Request, history, tree_, store, current_id, *values):
        if current_id or history:
            store, _ = past.save_chat(store, current_id, history or [], tree_, list(values))
        store, chat_id = past.new_chat(store, list(values))
        user = user_of(request)
        if user:
            disk.save(user, store)
        shown = list(show_chat(store, chat_id, request))
        shown[len(show_outputs) - len(params)] = default_system  # its system prompt: the default, not the last chat's
        return (store, *shown)

    @toasting(len(show_outputs) + 1)
    def delete_current(store, current_id, request: gr.Request = None):
        store, chat_id = past.delete_chat(store, current_id)
        user = user_of(request)
        if user:
            disk.save(user, store)
        return (store, *show_chat(store, chat_id, request))

    @toasting(3)
    def rename_current(name, store, current_id, query, request: gr.Request = None):
        store = past.rename_chat(store, current_id, name)
        user = user_of(request)
        if user:
            disk.save(user, store)
        return store, listing(store, current_id, query), past.get_chat(store, current_id)["title"]

    @toasting(len(show_outputs) + 1)
    def import_file(path, store, request: gr.Request = None):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            gr.Warning(f"That file is not a JSON conversation ({type(exc).__name__}).")
            return tuple(gr.skip() for _ in range(len(show_outputs) + 1))
        store, chat_id = past.import_chats(store, data)
        user = user_of(request)
        if user:
            disk.save(user, store)
        return (store, *show_chat(store, chat_id, request))

    def clear_chat():
        return [], ct.empty_tree(), None, "", ""

    # --- wiring -----------------------------------------------------------------------------------

    bar_inputs, bar_outputs = [chatbot, tree, focus], [version_row, version_label, branch_map]
    turns = []
    saves = []  # a finished turn's save steps: leaving the chat saves it itself, so they are cancelled then

    def turn_chain(trigger):
        """prepare -> run_turn -> save: ``trigger`` is an event already bound to a prepare step. Beside
        the run, the question and its pending reply are saved at once (a reload mid-reply finds them)."""
        # show_progress hidden: Gradio's own pending bubble would sit above the last question while the
        # reply streams; the turn shows its own placeholder instead
        early = trigger.then(actions.version_bar, bar_inputs, bar_outputs, **private)
        saves.extend([early, early.then(sync, sync_inputs, sync_outputs, **private)])
        ev = trigger.then(run, [job, tree, *params], run_outputs, show_progress="hidden", **model_bound)
        turns.append(ev)
        bar = ev.then(actions.version_bar, bar_inputs, bar_outputs, **private)
        saves.extend([bar, bar.then(sync, sync_inputs, sync_outputs, **private)])
        return ev

    for sending in (message.submit, send.click):  # the attach box empties once its files are in the message
        sent = sending(actions.prepare_send, [message, chatbot, tree, files], prep_outputs, **private)
        sent.then(attachments.emptied, [job, files], files, **private)
        turn_chain(sent)
    turn_chain(regenerate.click(actions.prepare_regenerate, [chatbot, tree], prep_outputs, **private))
    turn_chain(chatbot.retry(actions.prepare_regenerate, [chatbot, tree], prep_outputs, **private))
    turn_chain(cont.click(actions.prepare_continue, [chatbot, tree], prep_outputs, **private))
    turn_chain(chatbot.edit(actions.on_edit, [chatbot, tree], prep_outputs, **private))

    def resume_chain(trigger):
        """After a chat comes on screen (page load, switch: they click the hidden ``resume``): follow a
        reply still generating in it. Following costs no model slot (the generation already holds
        one), so no concurrency limit."""
        ev = trigger(actions.prepare_resume, [tree], prep_outputs, **private).then(
            run, [job, tree, *params], run_outputs, show_progress="hidden", concurrency_limit=None,
            api_visibility="private")
        turns.append(ev)
        bar = ev.then(actions.version_bar, bar_inputs, bar_outputs, **private)
        saves.extend([bar, bar.then(sync, sync_inputs, sync_outputs, **private)])

    resume_chain(resume.click)
    follow = {"fn": None, "inputs": None, "outputs": None, "js": "() => document.getElementById('chat-resume').click()",
              **private}

    stop.click(None, None, None, cancels=turns, **private)
    stop.click(actions.finish_stopped, [job, tree], [chatbot, stats, tree, tokens], **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)

    for trigger in (remove.click, chatbot.undo, clear.click, chatbot.clear, confirm_delete.click):  # no more wanted
        trigger(actions.drop_running, [job], None, **private)
    for trigger in (remove.click, chatbot.undo):
        trigger(actions.remove_last, [chatbot, tree], [chatbot, message, tree], cancels=turns, **private).then(
            actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)
    replace.click(actions.replace_last, [message, chatbot, tree], [chatbot, message, tree], **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)
    for trigger in (clear.click, chatbot.clear):  # the button and the Chatbot's trash icon do the same
        trigger(clear_chat, None, [chatbot, tree, focus, stats, tokens], cancels=turns, **private).then(
            actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)

    prev.click(actions.step_version(-1), bar_inputs, [chatbot, tree, stats], **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)
    nxt.click(actions.step_version(1), bar_inputs, [chatbot, tree, stats], **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)
    # a message's own arrows (drawn by KEYS_JS): the page's script names the node and the step
    branch_switch.click(actions.switch_branch, [branch_cmd, tree], [chatbot, tree, stats],
                        js="(command, tree) => [window.__quantlabBranch || '', tree]", **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private).then(sync, sync_inputs, sync_outputs, **private)
    branch_map.change(None, None, None, js="() => { if (window.__quantlabArrows) window.__quantlabArrows(); }",
                      **private)
    chatbot.select(actions.focus_on, chatbot, focus, **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private)

    # past chats
    search.change(lambda store, chat_id, q: listing(store, chat_id, q), [saved, current, search], chat_list,
                 **private)
    switched = chat_list.input(switch, [chat_list, chatbot, tree, saved, current, search, *params],
                               [saved, *show_outputs], cancels=turns + saves, **private)
    switched.then(actions.version_bar, bar_inputs, bar_outputs, **private)
    switched.then(**follow)
    new.click(start_new, [chatbot, tree, saved, current, *params], [saved, *show_outputs], cancels=turns + saves,
              **private).then(actions.version_bar, bar_inputs, bar_outputs, **private).then(
        sync, sync_inputs, sync_outputs, **private)  # the new chat keeps the default system prompt on a reload
    delete.click(lambda name: (gr.Group(visible=True), f"Delete the chat “{name or 'New chat'}”? This cannot be undone."),
                 title, [confirm_row, confirm_text], queue=False, **private)
    cancel_delete.click(lambda: gr.Group(visible=False), None, confirm_row, queue=False, **private)
    confirm_delete.click(lambda: gr.Group(visible=False), None, confirm_row, queue=False, **private).then(
        delete_current, [saved, current], [saved, *show_outputs], cancels=turns + saves, **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private)
    rename.click(rename_current, [title, saved, current, search], [saved, chat_list, title], **private)
    import_.upload(import_file, [import_, saved], [saved, *show_outputs], **private).then(
        actions.version_bar, bar_inputs, bar_outputs, **private)
    # a setting changed without a new turn is saved too, so a reload shows it
    for comp in params:
        trigger = comp.blur if isinstance(comp, gr.Textbox) else comp.change
        trigger(sync, sync_inputs, sync_outputs, **private)

    def wire_load(blocks: gr.Blocks) -> None:
        restored = blocks.load(restore, saved, [saved, *show_outputs], **private)
        restored.then(actions.version_bar, bar_inputs, bar_outputs, **private)
        restored.then(**follow)
        # the picker's first choice names the model served now (the page may have been built before it loaded)
        restored.then(lambda value: gr.update(choices=picker_choices(h, value)), model, model, **private)
        blocks.load(None, None, None, js=KEYS_JS, **private)
        blocks.load(None, None, None, js=attachments.PASTE_JS, **private)  # paste or drop files on the message

    return ChatSection(chatbot, message, send, stop, regenerate, clear, stats, params, saved, sampling, wire_load)
