"""What the notebooks and reports are pointed at: the root and the period,
from command-line arguments (`--root`, `--from`, `--to`, `--days`) or the
environment (`CORTEX_ROOT`), and where a headless run writes its figures.

A notebook run as a script (`python analysis/worker-performance.py --root R
--figures out.json`) writes the figures it computed, with its
recommendations, to that JSON file; `make test` compares them with counts
taken from the archive independently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .load import Period


def root(args: dict, env=None) -> str:
    env = os.environ if env is None else env
    return str(args.get("root") or env.get("CORTEX_ROOT") or "coordination")


def period(args: dict) -> Period:
    """`--from`/`--to` (dates or RFC 3339 times), else the last `--days` (7)."""
    start, end = args.get("from"), args.get("to")
    return Period.parse(str(start) if start else None, str(end) if end else None, days=int(args.get("days") or 7))


def write_figures(args: dict, figures: dict) -> Path | None:
    """Writes `figures` as JSON to `--figures PATH`, when given."""
    target = args.get("figures")
    if not target:
        return None
    path = Path(str(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
