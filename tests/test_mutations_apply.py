"""Every deliberate bug in tests/mutations/mutations.toml still applies to the product code.

A refactor that moves or rewrites a mutation's target would otherwise turn that mutation into a silent
no-op, and the bug it stands for would stop being checked. The full mutation run (minutes per mutation)
is ``python tests/mutations/run.py``; this only checks that each ``old`` text occurs exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent / "mutations" / "run.py"


def test_every_mutation_still_applies_to_the_code():
    done = subprocess.run([sys.executable, str(RUN), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("ok ") >= 20, done.stdout  # the list was read, not skipped
