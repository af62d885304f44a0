"""Shared fixtures: the analysis package on the path, and one small demo
root built through the real pipeline (`cortex init`, `emit --batch`,
`dispatch`) for the end-to-end tests.

The demo needs the built binary and handler components: `make
analysis-test` passes them as `CORTEX` and `CORTEX_HANDLERS` (and a
`CORTEX_CACHE` shared between runs, so the Python cost handler compiles
once). Without them the end-to-end tests fail and say so; they are never
skipped.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parent.parent
REPO = ANALYSIS.parent
sys.path.insert(0, str(ANALYSIS))

#: The demo's size in the tests: two days, a few hundred events.
DAYS = 2
TASKS_PER_DAY = 40
HEARTBEAT_MINUTES = 120


class Demo:
    """A demo root and the period that covers it (follow-ups included)."""

    def __init__(self, root: Path, start: dt.datetime, end: dt.datetime):
        self.root = root
        self.start = start
        self.end = end

    @property
    def period_args(self) -> list[str]:
        return ["--from", self.start.isoformat(), "--to", self.end.isoformat()]


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    cortex, handlers = os.environ.get("CORTEX"), os.environ.get("CORTEX_HANDLERS")
    if not cortex or not Path(cortex).exists() or not handlers:
        pytest.fail("set CORTEX (the cortex binary) and CORTEX_HANDLERS (built components); "
                    "`make analysis-test` does", pytrace=False)
    root = tmp_path_factory.mktemp("demo") / "root"
    end = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    done = subprocess.run(
        [sys.executable, str(ANALYSIS / "demo.py"), "--root", str(root), "--cortex", cortex, "--handlers", handlers,
         "--days", str(DAYS), "--tasks-per-day", str(TASKS_PER_DAY), "--heartbeat-minutes", str(HEARTBEAT_MINUTES),
         "--end", end.isoformat(), "--quiet"],
        capture_output=True, text=True)
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    # Follow-up events carry the time they were emitted: end the period
    # after the demo finished so they are in it.
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    return Demo(root, end - dt.timedelta(days=DAYS), after)
