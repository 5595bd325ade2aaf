"""The blind arena's bookkeeping (fast): Wilson's interval, the per-pair tally, rounds that hide their
names until the vote, one vote per round, and votes that any store over the same folder reads back."""

from __future__ import annotations

import json
import random

import pytest

from backends.errors import InvalidRequest, UnsupportedQuantization
from optimization.arena import ArenaStore, results_csv, tally, wilson


def test_wilson_matches_the_published_intervals():
    # Newcombe (1998), table I: 95 % Wilson score intervals
    lo, hi = wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson(15, 148)
    assert (round(lo, 4), round(hi, 4)) == (0.0624, 0.1605)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and round(hi, 4) == 0.1611
    lo, hi = wilson(1, 29)
    assert (round(lo, 4), round(hi, 4)) == (0.0061, 0.1718)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and round(lo, 4) == 0.7225
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_the_interval_narrows_as_votes_accumulate_around_the_same_rate():
    widths = [hi - lo for lo, hi in (wilson(3 * k, 4 * k) for k in (1, 4, 16, 64))]
    assert widths == sorted(widths, reverse=True)


def vote(a, b, choice, figs=None):
    winner = {"A": a, "B": b}.get(choice)
    return {"pair": [a, b], "a": a, "b": b, "vote": choice, "winner": winner, "figures": figs or {a: {}, b: {}}}


def test_the_tally_counts_each_pair_whatever_side_each_was_shown_on():
    votes = [vote("Q8_0", "Q2_K", "A"), vote("Q2_K", "Q8_0", "B"), vote("Q2_K", "Q8_0", "A"),
             vote("Q8_0", "Q2_K", "tie"), vote("Q8_0", "Q2_K", "both bad"), vote("Q8_0", "Q4_0", "B")]
    rows = {(r["model_a"], r["model_b"]): r for r in tally(votes)}
    r = rows[("Q2_K", "Q8_0")]  # named in sorted order
    assert (r["votes"], r["a_wins"], r["b_wins"], r["ties"], r["both_bad"]) == (5, 1, 2, 1, 1)
    assert r["a_win_rate"] == pytest.approx(1 / 3, abs=1e-6)
    lo, hi = wilson(1, 3)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    r = rows[("Q4_0", "Q8_0")]
    assert (r["a_wins"], r["b_wins"], r["a_win_rate"]) == (1, 0, 1.0)
    ties_only = tally([vote("x", "y", "tie")])[0]
    assert ties_only["a_win_rate"] is None and ties_only["ci_low"] is None


def test_the_tally_averages_each_contenders_figures():
    votes = [vote("a", "b", "A", {"a": {"kld_mean": 0.1, "memory_mib": 100, "tokens_per_s": 50},
                                   "b": {"kld_mean": None, "memory_mib": 200, "tokens_per_s": 30}}),
             vote("b", "a", "A", {"a": {"kld_mean": 0.3, "memory_mib": 100, "tokens_per_s": 70},
                                   "b": {"kld_mean": None, "memory_mib": 200, "tokens_per_s": 40}})]
    [r] = tally(votes)
    assert r["a_kld"] == pytest.approx(0.2) and r["b_kld"] is None
    assert (r["a_memory_mib"], r["b_memory_mib"], r["a_tokens_per_s"], r["b_tokens_per_s"]) == (100, 200, 60, 35)
    assert results_csv([r]).splitlines()[0].startswith("model_a,model_b,votes,a_wins")


def side(name, text):
    return {"name": name, "text": text, "finish_reason": "stop", "figures": {"memory_mib": 123.4, "tokens_per_s": 9.9}}


def test_a_round_hides_the_names_until_its_one_vote(tmp_path):
    store = ArenaStore(tmp_path / "arena")
    shown = store.open_round("Say hi", side("llamacpp:Q8_0", "hi there"), side("llamacpp:Q2_K", "hello"))
    blob = json.dumps(shown)
    assert "Q8_0" not in blob and "Q2_K" not in blob and "123.4" not in blob
    assert {shown["A"]["text"], shown["B"]["text"]} == {"hi there", "hello"}
    revealed = store.vote(shown["round"], "B")
    by_text = {revealed[s]["text"]: revealed[s]["name"] for s in ("A", "B")}
    assert by_text == {"hi there": "llamacpp:Q8_0", "hello": "llamacpp:Q2_K"}
    assert revealed["winner"] == by_text[shown["B"]["text"]]
    assert revealed["results"]["votes"] == 1
    with pytest.raises(InvalidRequest, match="already voted"):
        store.vote(shown["round"], "A")


def test_votes_and_waiting_rounds_are_read_back_by_a_new_store(tmp_path):
    first = ArenaStore(tmp_path / "arena")
    r1 = first.open_round("p", side("x", "1"), side("y", "2"))
    r2 = first.open_round("p", side("x", "3"), side("y", "4"))
    first.vote(r1["round"], "tie")
    again = ArenaStore(tmp_path / "arena")
    assert again.results()[0]["ties"] == 1
    again.vote(r2["round"], "both bad")
    assert (first.results()[0]["votes"], first.results()[0]["both_bad"]) == (2, 1)
    with open(tmp_path / "arena" / "votes.jsonl", "a") as f:
        f.write('{"pair": ["x", "y"], "cut sho')  # a crash mid-line loses that line only
    assert first.results()[0]["votes"] == 2


def test_both_orders_are_shown(tmp_path):
    store = ArenaStore(tmp_path / "arena")
    rng = random.Random(1)
    firsts = {store.open_round("p", side("x", "X"), side("y", "Y"), rng)["A"]["text"] for _ in range(20)}
    assert firsts == {"X", "Y"}


def test_bad_votes_and_rounds_are_refused_clearly(tmp_path):
    store = ArenaStore(tmp_path / "arena")
    r = store.open_round("p", side("x", "1"), side("y", "2"))
    with pytest.raises(InvalidRequest, match="vote must be one of A, B, tie, both bad"):
        store.vote(r["round"], "C")
    with pytest.raises(InvalidRequest, match="32 hex digits"):
        store.vote("../../etc/passwd", "A")
    with pytest.raises(InvalidRequest, match="No round waits"):
        store.vote("0" * 32, "A")
    with pytest.raises(InvalidRequest, match="same"):
        store.open_round("p", side("x", "1"), side("x", "2"))
    assert store.vote(r["round"], " both BAD ")["vote"] == "both bad"


def test_contenders_are_variants_or_variants_of_another_model():
    import secrets

    from serving.arena import parse_contender, pick_pair
    from tests.conftest import make_manager, make_services

    h = make_services(make_manager())
    assert parse_contender("llamacpp:q8_0", "embedded", h) == ("embedded", "llamacpp:Q8_0", "llamacpp:Q8_0")
    assert parse_contender("models/other.gguf | llamacpp:Q2_K", "embedded", h) == (
        "models/other.gguf", "llamacpp:Q2_K", "other.gguf | llamacpp:Q2_K")
    rng = secrets.SystemRandom()
    assert len({c[2] for c in pick_pair(["llamacpp:Q8_0", "llamacpp:Q2_K", "llamacpp:Q4_0"], h, "embedded", rng)}) == 2
    with pytest.raises(InvalidRequest, match="two different contenders"):
        pick_pair(["llamacpp:Q8_0", "llamacpp:q8_0"], h, "embedded", rng)
    with pytest.raises(UnsupportedQuantization, match="Unknown variant"):
        pick_pair(["llamacpp:Q8_0", "nonsense"], h, "embedded", rng)
