"""The blind arena and the token divergence through the real server: gradio_client against
``python app.py`` processes. The round hides its names until the vote, and the votes (and a round
still waiting for one) survive a restart of the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

from tests.conftest import free_port
from tests.live_server import wait_for

pytestmark = pytest.mark.slow
PAIR = ["llamacpp:Q8_0", "llamacpp:Q2_K"]


class AppProcess:
    """``python app.py --no-model`` on a free port with this session's cache dir; killed on exit."""

    def __enter__(self):
        self.url = f"http://127.0.0.1:{free_port()}"
        env = dict(os.environ, QUANTLAB_REQUEST_LOG="")  # QUANTLAB_CACHE_DIR: the session's (tests/conftest.py)
        self.proc = subprocess.Popen([sys.executable, "app.py", "--no-model", "--port", self.url.rsplit(":", 1)[1],
                                      "--shutdown-timeout", "1"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: self._live(), 180, "the app answering /live")
        self.client = Client(self.url, verbose=False)
        return self

    def _live(self) -> bool:
        assert self.proc.poll() is None, f"the app exited with {self.proc.returncode}"
        try:
            return httpx.get(self.url + "/live").status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc):
        self.client.close()
        self.proc.kill()  # no graceful shutdown: what was voted must already be on disk
        self.proc.wait(timeout=60)


def pair_row(rows, names=PAIR):
    return next((r for r in rows if {r["model_a"], r["model_b"]} == set(names)), None)


def test_names_stay_hidden_until_the_vote_and_the_votes_survive_a_restart():
    with AppProcess() as app:
        before = pair_row(app.client.predict(api_name="/arena_results"))
        n0 = before["votes"] if before else 0
        shown = app.client.predict("Name a colour.", PAIR, "embedded", 12, 0.0, 0, "llamacpp:Q8_0",
                                   api_name="/arena_round")
        blob = json.dumps(shown)
        assert "Q8_0" not in blob and "Q2_K" not in blob and "llamacpp" not in blob, blob
        assert shown["A"]["text"] and shown["B"]["text"] and len(shown["round"]) == 32
        waiting = app.client.predict("Name a fruit.", PAIR, "embedded", 8, 0.0, 0, "", api_name="/arena_round")
        revealed = app.client.predict(shown["round"], "A", api_name="/arena_vote")
        assert {revealed["A"]["name"], revealed["B"]["name"]} == set(PAIR)
        assert revealed["winner"] == revealed["A"]["name"] and revealed["A"]["text"] == shown["A"]["text"]
        figs = {revealed[s]["name"]: revealed[s]["figures"] for s in ("A", "B")}
        assert figs["llamacpp:Q8_0"]["kld_mean"] < 1e-5 < figs["llamacpp:Q2_K"]["kld_mean"]  # vs Q8_0 itself
        assert figs["llamacpp:Q2_K"]["memory_mib"] < figs["llamacpp:Q8_0"]["memory_mib"]
        assert revealed["results"]["votes"] == n0 + 1
        # Compare's token divergence on the API: the same reply scored against the same reference
        q2 = "A" if revealed["A"]["name"] == "llamacpp:Q2_K" else "B"
        [d] = app.client.predict("Name a colour.", [{"variant": "llamacpp:Q2_K", "text": revealed[q2]["text"]}],
                                 "embedded", "llamacpp:Q8_0", api_name="/token_divergence")
        assert d["kld_mean"] == pytest.approx(figs["llamacpp:Q2_K"]["kld_mean"], rel=1e-5)
        assert len(d["tokens"]) == d["scored"] > 0 and {"text", "kld", "same_top1"} <= set(d["tokens"][0])
    with AppProcess() as app:  # a new process over the same cache dir
        after = pair_row(app.client.predict(api_name="/arena_results"))
        assert after == revealed["results"]
        with pytest.raises(Exception, match="already voted"):
            app.client.predict(shown["round"], "B", api_name="/arena_vote")
        tie = app.client.predict(waiting["round"], "tie", api_name="/arena_vote")  # waited through the restart
        assert tie["results"]["votes"] == n0 + 2 and tie["results"]["ties"] == after["ties"] + 1
