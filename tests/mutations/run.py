"""Mutation checks: put one small, realistic bug into a copy of the product code and run the tests
that should catch it. A test suite that still passes with the bug in place is missing a test.

    python tests/mutations/run.py                 # every mutation, then the table
    python tests/mutations/run.py NAME [NAME ...] # only these (see --list)
    python tests/mutations/run.py --list          # names, files and the tests that should catch each
    python tests/mutations/run.py --check         # only check that every mutation still applies (seconds)
    python tests/mutations/run.py --baseline NAME # also run its tests unmutated first (they must pass)

The mutations are listed in ``mutations.toml`` beside this file: each names one product file, one or
more exact text replacements in it (each ``old`` text must occur exactly once, or the run stops: a
mutation whose target moved is rewritten, never silently skipped), what a user loses with the bug, and
the pytest arguments (node ids, files, ``-k`` expressions) that should fail. ``pending = true`` marks a
selector written before its test existed: check it once the test is there.

Each mutation runs in its own copy of the working tree's tracked files (uncommitted edits included)
in a temporary folder, with the interpreter running this script (the project's virtual environment),
so the checkout itself is never modified. Results: ``caught`` (the tests failed), ``SURVIVED`` (they
passed: a missing test), ``no tests`` (the selection matched nothing), ``error`` (pytest could not
run), ``caught (timeout)`` (the tests hung). Exit status 1 when any mutation survived or could not
be checked. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DATA = HERE / "mutations.toml"
TIMEOUT_S = 1200  # one mutation's tests; a hang past this counts as caught (CI would fail on it too)


@dataclass
class Mutation:
    name: str
    file: str
    loses: str
    replace: list[tuple[str, str]]
    tests: list[str]
    pending: bool = False
    note: str = ""


@dataclass
class Result:
    mutation: Mutation
    outcome: str
    seconds: float
    detail: str = ""
    baseline: str | None = field(default=None)


class Rotted(Exception):
    """A mutation's target text is not in its file exactly once."""


def load(path: Path = DATA) -> list[Mutation]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for m in data["mutation"]:
        pairs = [(r["old"], r["new"]) for r in m["replace"]]
        out.append(Mutation(m["name"], m["file"], m["loses"], pairs, list(m["tests"]), m.get("pending", False),
                            m.get("note", "")))
    names = [m.name for m in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"{path.name}: duplicate mutation names {sorted(dup)}")
    return out


def mutated_text(m: Mutation, text: str) -> str:
    for i, (old, new) in enumerate(m.replace):
        n = text.count(old)
        if n != 1:
            where = "not found" if n == 0 else f"found {n} times"
            raise Rotted(f"{m.name}: replacement {i + 1} in {m.file} {where}; rewrite it against the current code:\n"
                         f"{old}")
        if old == new:
            raise Rotted(f"{m.name}: replacement {i + 1} changes nothing")
        text = text.replace(old, new)
    return text


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    """The working tree's files that git tracks or would track (not ignored ones: no venv, no caches)."""
    for rel in tracked_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check_imports_from(copy: Path, python: str) -> None:
    """The product code the tests import must be the copy's, not an installed or other checkout's."""
    out = subprocess.run([python, "-c", "import backends, serving; print(backends.__file__); print(serving.__file__)"],
                         cwd=copy, capture_output=True, text=True, env=child_env(copy))
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        raise SystemExit(f"the copy's product code is not what Python imports there: {out.stdout}{out.stderr}")


def child_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTLAB_CACHE_DIR")}
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(copy: Path, m: Mutation, python: str) -> tuple[str, str]:
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *m.tests]
    try:
        out = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "caught (timeout)", f"no result in {TIMEOUT_S} s"
    tail = (out.stdout + out.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    if out.returncode == 0:
        return "SURVIVED", last
    if out.returncode == 1:
        failed = [line for line in tail if line.startswith(("FAILED tests/", "ERROR tests/"))]  # not log lines
        return "caught", (failed[0] if failed else last)
    if out.returncode in (4, 5):  # a selector naming no file / matching no test
        return "no tests", last
    return "error", f"pytest exit {out.returncode}: {last}"


def run_one(m: Mutation, python: str, baseline: bool, keep: bool) -> Result:
    t0 = time.monotonic()
    copy = Path(tempfile.mkdtemp(prefix=f"mutation-{m.name}-"))
    try:
        copy_tree(ROOT, copy)
        target = copy / m.file
        text = target.read_text(encoding="utf-8")
        mutated = mutated_text(m, text)  # raises Rotted before any test runs
        check_imports_from(copy, python)
        base = None
        if baseline:
            base, detail = run_tests(copy, m, python)
            if base != "SURVIVED":  # unmutated, the tests must pass
                return Result(m, "baseline fails", time.monotonic() - t0, f"{base}: {detail}", base)
            base = "passes"
        target.write_text(mutated, encoding="utf-8")
        outcome, detail = run_tests(copy, m, python)
        return Result(m, outcome, time.monotonic() - t0, detail, base)
    finally:
        if keep:
            print(f"  (kept {copy})", file=sys.stderr)
        else:
            shutil.rmtree(copy, ignore_errors=True)


def check_all(mutations: list[Mutation]) -> int:
    bad = 0
    for m in mutations:
        try:
            mutated_text(m, (ROOT / m.file).read_text(encoding="utf-8"))
            print(f"ok      {m.name}")
        except (Rotted, OSError) as exc:
            bad += 1
            print(f"ROTTED  {exc}")
    return 1 if bad else 0


def table(results: list[Result]) -> str:
    rows = [("mutation", "what a user loses", "result", "s")]
    for r in results:
        name = r.mutation.name + (" (selector pending)" if r.mutation.pending else "")
        rows.append((name, r.mutation.loses, r.outcome, f"{r.seconds:.0f}"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|---|---|---|---:|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests")
    ap.add_argument("--check", action="store_true", help="only check that each mutation still applies")
    ap.add_argument("--baseline", action="store_true", help="run each selection unmutated first; it must pass")
    ap.add_argument("--skip-pending", action="store_true", help="leave out mutations whose selector is pending")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (to debug a mutation)")
    ap.add_argument("--python", default=sys.executable, help="interpreter with the test dependencies")
    args = ap.parse_args(argv)

    mutations = load()
    if args.names:
        known = {m.name: m for m in mutations}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            ap.error(f"unknown mutation(s) {unknown}; --list shows the names")
        mutations = [known[n] for n in args.names]
    if args.skip_pending:
        mutations = [m for m in mutations if not m.pending]
    if args.list:
        for m in mutations:
            print(f"{m.name}{'  [selector pending]' if m.pending else ''}\n  {m.file}: {m.loses}\n"
                  f"  tests: {' '.join(m.tests)}")
        return 0
    if args.check:
        return check_all(mutations)

    results = []
    for i, m in enumerate(mutations, 1):
        print(f"[{i}/{len(mutations)}] {m.name} ...", file=sys.stderr, flush=True)
        try:
            r = run_one(m, args.python, args.baseline, args.keep)
        except Rotted as exc:
            print(f"ROTTED: {exc}", file=sys.stderr)
            return 2
        print(f"  {r.outcome} in {r.seconds:.0f} s: {r.detail}", file=sys.stderr, flush=True)
        results.append(r)
    print(table(results))
    return 0 if all(r.outcome.startswith("caught") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
