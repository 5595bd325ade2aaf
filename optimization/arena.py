"""The blind arena: one prompt, two contenders (variants of a model, or two models), replies shown as
A and B in random order; the user votes A, B, tie or both bad, and only then are the names shown.

Everything lives on disk under ``<cache dir>/arena`` so that it survives a restart and any number of
``ArenaStore`` objects over the same folder agree: a round waiting for its vote is a file under
``rounds/`` (its names are never sent before the vote; the file is removed by the vote, so a round is
voted once), and each vote is one JSON line appended to ``votes.jsonl`` (under a file lock).

Win rate: over the decisive votes of a pair (A or B won), with Wilson's score interval; ties and
"both bad" are counted beside it. Each vote also records both contenders' memory, decode tok/s and,
when a reference was given, the mean KLD of their reply against it (token_divergence), which the
results average per contender.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import re
import secrets
import time
from pathlib import Path

from backends.errors import InvalidRequest

VOTES = ("A", "B", "tie", "both bad")
ROUND_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_PENDING = 200  # rounds waiting for a vote; the oldest are dropped beyond this
Z95 = 1.959963984540054  # the normal quantile of a 95 % two-sided interval
RESULT_FIELDS = ("model_a", "model_b", "votes", "a_wins", "b_wins", "ties", "both_bad", "a_win_rate", "ci_low",
                 "ci_high", "a_kld", "b_kld", "a_memory_mib", "b_memory_mib", "a_tokens_per_s", "b_tokens_per_s")


def arena_dir(cache_dir: Path) -> Path:
    """Where a server keeps its arena: beside the variants in its cache dir."""
    return Path(cache_dir) / "arena"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (successes of n); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must be between 0 and n ({n})")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _mean(values: list) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return round(sum(vals) / len(vals), 6) if vals else None


def tally(votes: list[dict]) -> list[dict]:
    """Per pair of contenders (named in sorted order: ``model_a`` < ``model_b``): the votes, each side's
    wins, ties, both bad, ``model_a``'s win rate over decisive votes with its 95 % Wilson interval
    (None without a decisive vote) and each side's mean KLD, memory and tok/s over the rounds."""
    pairs: dict[tuple[str, str], list[dict]] = {}
    for v in votes:
        pairs.setdefault(tuple(sorted(v["pair"])), []).append(v)
    rows = []
    for (a, b), vs in sorted(pairs.items()):
        a_wins = sum(v["winner"] == a for v in vs)
        b_wins = sum(v["winner"] == b for v in vs)
        decisive = a_wins + b_wins
        lo, hi = wilson(a_wins, decisive) if decisive else (None, None)
        row = {"model_a": a, "model_b": b, "votes": len(vs), "a_wins": a_wins, "b_wins": b_wins,
               "ties": sum(v["vote"] == "tie" for v in vs), "both_bad": sum(v["vote"] == "both bad" for v in vs),
               "a_win_rate": round(a_wins / decisive, 6) if decisive else None,
               "ci_low": None if lo is None else round(lo, 6), "ci_high": None if hi is None else round(hi, 6)}
        for side, name in (("a", a), ("b", b)):
            figs = [v["figures"].get(name, {}) for v in vs]
            row[f"{side}_kld"] = _mean([f.get("kld_mean") for f in figs])
            row[f"{side}_memory_mib"] = _mean([f.get("memory_mib") for f in figs])
            row[f"{side}_tokens_per_s"] = _mean([f.get("tokens_per_s") for f in figs])
        rows.append(row)
    return rows


def results_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=RESULT_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in RESULT_FIELDS})
    return out.getvalue()


class ArenaStore:
    """The arena's rounds and votes in ``directory`` (created on first write)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @property
    def _rounds(self) -> Path:
        return self.dir / "rounds"

    @property
    def _votes(self) -> Path:
        return self.dir / "votes.jsonl"

    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def open_round(self, prompt: str, first: dict, second: dict, rng: secrets.SystemRandom | None = None) -> dict:
        """Keep a round whose two contenders ({name, text, finish_reason, figures}) are shown as A and B
        in random order. Returns what may be shown before the vote: {round, A: {text, finish_reason},
        B: {...}}: no names, no figures."""
        if first["name"] == second["name"]:
            raise InvalidRequest("The two contenders are the same: choose two different ones.", "contenders")
        a, b = (first, second) if (rng or secrets.SystemRandom()).random() < 0.5 else (second, first)
        round_id = secrets.token_hex(16)
        record = {"round": round_id, "time": time.time(), "prompt": prompt, "A": a, "B": b}
        with self._locked():
            self._rounds.mkdir(parents=True, exist_ok=True)
            tmp = self._rounds / f".{round_id}.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self._rounds / f"{round_id}.json")
            self._drop_old_rounds()
        return blind(record)

    def _drop_old_rounds(self) -> None:
        files = sorted(self._rounds.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for p in files[:-MAX_PENDING]:
            p.unlink(missing_ok=True)

    def vote(self, round_id: str, vote: str) -> dict:
        """Record ``vote`` (A, B, tie or both bad) for a waiting round and reveal it: {round, vote,
        winner (a name or None), A: {name, text, finish_reason, figures}, B: {...}, results: the pair's
        tally row}."""
        round_id = (round_id or "").strip() if isinstance(round_id, str) else ""
        if not ROUND_ID.match(round_id):
            raise InvalidRequest("round must be the id /arena_round returned (32 hex digits).", "round")
        choice = next((v for v in VOTES if isinstance(vote, str) and v.lower() == vote.strip().lower()), None)
        if choice is None:
            raise InvalidRequest(f"vote must be one of {', '.join(VOTES)}, not {vote!r}.", "vote")
        with self._locked():
            path = self._rounds / f"{round_id}.json"
            if not path.is_file():
                raise InvalidRequest("No round waits for a vote under that id (already voted, or unknown).", "round")
            record = json.loads(path.read_text())
            a, b = record["A"], record["B"]
            winner = {"A": a["name"], "B": b["name"]}.get(choice)
            line = {"time": time.time(), "round": round_id, "pair": [a["name"], b["name"]], "a": a["name"],
                    "b": b["name"], "vote": choice, "winner": winner, "prompt": record["prompt"],
                    "figures": {a["name"]: a.get("figures", {}), b["name"]: b.get("figures", {})}}
            with open(self._votes, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            path.unlink()
        pair = tuple(sorted((a["name"], b["name"])))
        row = next(r for r in tally(self.votes()) if (r["model_a"], r["model_b"]) == pair)
        return {"round": round_id, "vote": choice, "winner": winner, "A": a, "B": b, "results": row}

    def votes(self) -> list[dict]:
        """Every vote kept, oldest first (a line cut short by a crash is skipped)."""
        if not self._votes.is_file():
            return []
        out = []
        for line in self._votes.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                v = json.loads(line)
                if isinstance(v, dict) and "pair" in v:
                    out.append(v)
        return out

    def results(self) -> list[dict]:
        return tally(self.votes())


def blind(record: dict) -> dict:
    """What a round shows before its vote: the replies, labelled A and B, nothing that names them."""
    return {"round": record["round"], "prompt": record["prompt"],
            **{side: {"text": record[side]["text"], "finish_reason": record[side].get("finish_reason")}
               for side in ("A", "B")}}


def win_rates(cache_dir: Path) -> list[dict]:
    """Per pair of contenders the arena has votes for (``tally``'s rows): a report can read this."""
    return ArenaStore(arena_dir(cache_dir)).results()


def standing(cache_dir: Path, names: set[str]) -> list[dict]:
    """The arena's results for the contender known by any of ``names``, one row per opponent, from its
    side: {opponent, wins, losses, ties, both_bad, win_rate, ci_low, ci_high} (win rate over decisive
    votes with its 95 % Wilson interval; None without a decisive vote). The report card lays them out."""
    rows = []
    for r in win_rates(cache_dir):
        for mine, theirs, won, lost, flip in (("model_a", "model_b", "a_wins", "b_wins", False),
                                              ("model_b", "model_a", "b_wins", "a_wins", True)):
            if r[mine] not in names:
                continue
            rate, low, high = r["a_win_rate"], r["ci_low"], r["ci_high"]
            if flip and rate is not None:  # the other side's rate: 1 - p, and the interval mirrored
                rate, low, high = 1 - rate, 1 - high, 1 - low
            rows.append({"opponent": r[theirs], "wins": r[won], "losses": r[lost], "ties": r["ties"],
                         "both_bad": r["both_bad"], "win_rate": rate, "ci_low": low, "ci_high": high})
    return rows
