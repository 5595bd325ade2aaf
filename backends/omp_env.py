"""The OpenMP wait policy of every engine in this process: set here, before any engine library loads.

llama.cpp (as llama-cpp-python builds it) and torch both compute on OpenMP teams (libgomp). At each
barrier between two graph ops a thread that arrives first waits for the others; libgomp makes it
*spin* for ``GOMP_SPINCOUNT`` iterations (300,000 by default, unbounded with
``OMP_WAIT_POLICY=active``) before it sleeps on a futex. On a quiet machine that spinning is what
makes small ops fast. On a shared CPU (another process busy: a Space's cpu-basic, a CI runner, a
laptop with a browser open) it is a collapse: the waiting thread burns the core that the thread it
waits for needs, and every op waits a scheduler time slice. Measured on a 2-core machine with one
busy process beside the engine, 2 threads with the default spin decoded under 1 tok/s; 1 thread or
a short spin decoded tens (benchmarks/README.md, "Shared CPU").

libgomp reads these variables once, when it is loaded (the first ``import llama_cpp`` or ``import
torch``), so they are set here and this module is imported first: by ``backends/__init__.py``
(every engine module lives in the ``backends`` package) and at the top of ``app.py``. A value the
user already set in the environment is kept as it is. :func:`describe` says, for ``/health``,
what is in force and whether libgomp was already loaded before this module ran (then the policy
could not apply, and it says so).
"""

from __future__ import annotations

import os
from types import MappingProxyType

# Spin this many iterations at a barrier, then sleep. One iteration is a load and a `pause` (~30 ns on
# the 2-core EPYC this was measured on), so ~0.9 ms: longer than the gap between two ops of a decode
# and than the gap between two tokens (sampling, streaming) on a free core, so a quiet machine keeps
# llama-server's speed; a tenth of libgomp's default (300,000, ~9 ms), so a partner thread preempted
# by another process costs under a millisecond per op instead of a burned time slice. Under lasting
# contention auto threads go down to 1 (backends/threads.py), where no thread waits at all.
SPIN_COUNT = "30000"
DEFAULTS = MappingProxyType({"GOMP_SPINCOUNT": SPIN_COUNT})
POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def libgomp_loaded(maps: str = "/proc/self/maps") -> bool:
    """Whether a libgomp is mapped into this process already (its policy then fixed)."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            return any("libgomp" in line for line in f)
    except OSError:  # not Linux: unknown, assume not
        return False


def _apply() -> MappingProxyType:
    """Set the defaults the user has not set; what was found and done, read once at import."""
    loaded_before = libgomp_loaded()
    user = {k: os.environ[k] for k in POLICY_VARS if k in os.environ}
    set_here = {}
    if not user:  # either variable set by the user means they chose the policy: leave both alone
        for name, value in DEFAULTS.items():
            os.environ[name] = value
            set_here[name] = value
    return MappingProxyType({"user": MappingProxyType(user), "set": MappingProxyType(set_here),
                             "libgomp_loaded_before": loaded_before})


_APPLIED = _apply()


def environ_without_policy() -> dict:
    """This process's environment less the variables set here: for a child process that should meet
    libgomp's defaults (llama-server, a raw engine in a benchmark), as a user would start it."""
    env = dict(os.environ)
    for name, value in _APPLIED["set"].items():
        if env.get(name) == value:
            env.pop(name)
    return env


def describe() -> dict:
    """The wait policy in force, for /health's details: the variables, who set them, and why."""
    env = {k: os.environ.get(k) for k in POLICY_VARS}
    if _APPLIED["libgomp_loaded_before"]:
        why = ("libgomp was loaded before the app set its wait policy (an engine library was imported "
               "first): libgomp's own defaults are in force")
    elif _APPLIED["user"]:
        why = "set in the environment by the user: kept"
    else:
        why = (f"GOMP_SPINCOUNT={SPIN_COUNT}: a waiting thread spins under a millisecond, then sleeps, so a "
               "preempted partner does not burn a core at every op (the app's default; set OMP_WAIT_POLICY or "
               "GOMP_SPINCOUNT to override)")
    return {"env": env, "source": "user" if _APPLIED["user"] else "app", "applied": not _APPLIED["libgomp_loaded_before"],
            "why": why}
