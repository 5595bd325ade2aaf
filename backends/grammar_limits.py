"""Bounds on what a constraint may expand to, checked before any engine builds a grammar from it.

A JSON Schema is small text that can ask for a huge grammar: llama-cpp-python turns ``maxLength: N``
(and ``maxItems``, a pattern's ``{m,n}``) into N nested optional groups, ``(c (c (c ...)?)?)?``, and
llama.cpp's GBNF parser descends one C stack frame pair per group (``parse_sequence`` ->
``parse_alternates``, about 450 bytes): some 18,000 levels overflow an 8 MiB thread stack and kill
the process (SIGSEGV, nothing logged). llama.cpp's own check (at most 2,000 rules made by one
repetition) only runs after that descent, which is why ``maxLength`` 1,001-12,000 is refused cleanly
and 20,000 crashes. Hence two checks, both raising InvalidRequest that names the limit:

- ``check_schema``: the schema document itself (any engine, before conversion): how deep it nests and
  how many repetitions its keywords and patterns ask for in all (a converter writes them out, so this
  also bounds the converter's time and memory);
- ``check_gbnf``: the GBNF text an engine will parse: its size, its rules and how deeply its groups
  nest. ``MAX_GBNF_NESTING`` is what llama.cpp accepts today from the converter (``maxLength`` up to
  1,000), a stack of well under 1 MiB.

No engine imports: pure text and JSON walking, iterative (a deep document cannot recurse here either).
"""

from __future__ import annotations

import re
from typing import Any

from backends.errors import InvalidRequest

MAX_SCHEMA_DEPTH = 32  # objects/arrays inside one another in the schema document
MAX_SCHEMA_REPEATS = 100_000  # maxLength, maxItems, a pattern's {m,n} ... summed over the schema
MAX_PATTERN_GROUPS = 32  # groups inside one another in one "pattern"
MAX_GBNF_NESTING = 1_000  # parenthesised groups inside one another (llama.cpp's parser recurses on each)
MAX_GBNF_RULES = 10_000
MAX_GBNF_CHARS = 2 * 2**20

REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                   "minContains", "maxContains")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")


def _count(value: Any) -> int:
    """A repetition keyword's value as a count (what a converter would write out); 0 if not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(min(max(value, 0), 10**18))


def check_schema(schema: Any, param: str = "response_format") -> None:
    """InvalidRequest naming ``param`` if ``schema`` nests deeper than MAX_SCHEMA_DEPTH or asks for
    more than MAX_SCHEMA_REPEATS repetitions in all (the largest is named)."""
    total, largest, where = 0, 0, ""
    todo: list[tuple[Any, int, str]] = [(schema, 1, "$")]
    while todo:
        node, depth, path = todo.pop()
        if isinstance(node, (dict, list)) and depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(f"{param}: the JSON schema nests more than {MAX_SCHEMA_DEPTH} levels deep (at {path[:200]}); "
                                 f"this server accepts at most {MAX_SCHEMA_DEPTH}.", param)
        if isinstance(node, list):
            todo += [(v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node)]
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            n = 0
            if key in REPEAT_KEYWORDS:
                n = _count(value)
            elif key == "pattern" and isinstance(value, str):
                n = pattern_repeats(value, param)
            if n:
                total += n
                if n > largest:
                    largest, where = n, f"{key} at {path}"
            if isinstance(value, (dict, list)):
                todo.append((value, depth + 1, f"{path}.{key}"))
    if total > MAX_SCHEMA_REPEATS:
        raise InvalidRequest(f"{param}: the JSON schema asks for {total:,} repetitions in all (maxLength, maxItems, "
                             f"minLength, minItems, a pattern's {{m,n}}; the largest: {largest:,}, {where[:200]}); "
                             f"this server accepts at most {MAX_SCHEMA_REPEATS:,}.", param)


def pattern_repeats(pattern: str, param: str = "response_format") -> int:
    """How many copies of its atoms a regular expression asks a grammar converter to write out: an
    atom under ``{m,n}`` counts max(m, n) times, under nested quantifiers the product. InvalidRequest
    if its groups nest deeper than MAX_PATTERN_GROUPS."""
    # stack of [copies so far in this group, copies of the last atom]; the last atom is what a quantifier repeats
    stack: list[list[int]] = [[0, 0]]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        top = stack[-1]
        if c == "\\":
            top[0] += top[1]
            top[1] = 1
            i += 2
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            top[0] += top[1]
            top[1] = 1
            i = j + 1
        elif c == "(":
            if len(stack) > MAX_PATTERN_GROUPS:
                raise InvalidRequest(f"{param}: a pattern nests groups more than {MAX_PATTERN_GROUPS} deep; this "
                                     f"server accepts at most {MAX_PATTERN_GROUPS}.", param)
            stack.append([0, 0])
            i += 1
        elif c == ")" and len(stack) > 1:
            inner = stack.pop()
            parent = stack[-1]
            parent[0] += parent[1]
            parent[1] = inner[0] + inner[1]
            i += 1
        elif c == "|":
            top[0] += top[1]  # alternatives are all written out: their copies add up
            top[1] = 0
            i += 1
        elif c in "*+?":
            i += 1
        elif c == "{" and (m := _QUANTIFIER.match(pattern, i)):
            lo = int(m.group(1) or 0)
            hi = int(m.group(3)) if m.group(3) else (lo if not m.group(2) else 0)
            top[1] *= max(lo, hi, 1)
            i = m.end()
        else:
            top[0] += top[1]
            top[1] = 1
            i += 1
        if stack[-1][1] > 10**15:
            stack[-1][1] = 10**15  # far past any limit: keep the arithmetic small
    while len(stack) > 1:  # an unclosed group: counted as if closed (the converter will refuse it)
        inner = stack.pop()
        stack[-1][0] += stack[-1][1]
        stack[-1][1] = inner[0] + inner[1]
    return stack[0][0] + stack[0][1]


_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}  # llama.cpp's parse_char: \\xHH, \\uHHHH, \\UHHHHHHHH


def _chars(body: str) -> list[int]:
    """The code points a GBNF literal's or class's ``body`` (between its delimiters) names, escapes decoded."""
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            e = body[i + 1]
            if e in _HEX_DIGITS:
                digits = body[i + 2:i + 2 + _HEX_DIGITS[e]]
                try:
                    out.append(int(digits, 16))
                except ValueError:
                    out.append(-1)
                i += 2 + len(digits)
                continue
            out.append(ord(e))
            i += 2
        else:
            out.append(ord(body[i]))
            i += 1
    return out


def gbnf_shape(text: str) -> tuple[int, int, bool]:
    """(deepest group nesting, number of rules, whether a literal requires the character U+0000) of
    GBNF ``text``; literals, character classes and comments are skipped as llama.cpp's parser skips
    them. No token can produce U+0000 (llama.cpp ends a token's text there): a grammar that requires
    it leaves no token allowed, and llama.cpp then aborts the process when it accepts one."""
    depth = deepest = rules = 0
    nul = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            start = i = i + 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
            chars = _chars(text[start:i])
            if 0 in chars and (c == '"' or chars == [0]):
                nul = True  # a literal with U+0000, or a class of U+0000 alone
            i += 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
            i += 1
        elif c == ")":
            depth = max(0, depth - 1)
            i += 1
        elif c == ":" and text.startswith("::=", i):
            rules += 1
            i += 3
        else:
            i += 1
    return deepest, rules, nul


def check_gbnf(text: str, param: str = "response_format", what: str = "the grammar") -> None:
    """InvalidRequest naming ``param`` if GBNF ``text`` is longer than MAX_GBNF_CHARS, has more than
    MAX_GBNF_RULES rules, requires U+0000, or nests groups deeper than MAX_GBNF_NESTING. ``what`` names the text's
    origin in the message (e.g. "this JSON schema's grammar")."""
    if len(text) > MAX_GBNF_CHARS:
        raise InvalidRequest(f"{param}: {what} is {len(text):,} characters long; this server accepts at most "
                             f"{MAX_GBNF_CHARS:,}.", param)
    deepest, rules, nul = gbnf_shape(text)
    if rules > MAX_GBNF_RULES:
        raise InvalidRequest(f"{param}: {what} has {rules:,} rules; this server accepts at most {MAX_GBNF_RULES:,}.",
                             param)
    if nul:
        raise InvalidRequest(f"{param}: {what} requires the character U+0000, which no token can produce (in a JSON "
                             "schema: a const, enum or pattern holding \\u0000).", param)
    if deepest > MAX_GBNF_NESTING:
        raise InvalidRequest(f"{param}: {what} nests {deepest:,} groups deep; llama.cpp's grammar parser is "
                             f"allowed at most {MAX_GBNF_NESTING:,} (each character up to maxLength, each item up "
                             "to maxItems and each repetition up to a pattern's {m,n} adds one: lower them).", param)
