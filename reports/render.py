"""Renders the reports — weekly-summary, security-audit, cost-report — for a
date range to self-contained HTML files (charts inlined as SVG), one per
report plus an index.html.

    python reports/render.py --root coordination --from 2026-11-24 --to 2026-11-30 --out out/
    python reports/render.py security-audit --root R --days 30 --out out/

`--to` is a date (its whole day is included) or an RFC 3339 time, default
now; `--from` likewise, default `--days` (7) before `--to`. Each report is a
module in this folder with a `TITLE` and `build(data, page)`; the numbers come
from `analysis/cortexdata`, the same code the notebooks use. `make reports`
runs this with the pinned toolchain; `deploy/cortex-reports.timer` runs it
weekly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "analysis"))
sys.path.insert(0, str(HERE))

import cortexdata as cd  # noqa: E402
from page import Page  # noqa: E402

REPORTS = ["weekly-summary", "security-audit", "cost-report"]


def load_report(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(name: str, data: cd.Dataset, generated: dt.datetime | None = None) -> str:
    report = load_report(name)
    page = Page(report.TITLE, f"{data.period.label} · root {data.root.path}")
    report.build(data, page)
    return page.html(generated)


def index(names: list[str], period: cd.Period) -> str:
    links = "".join(f'<li><a href="{n}.html">{html.escape(load_report(n).TITLE)}</a></li>' for n in names)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Cortex reports</title></head>"
            f"<body><h1>Cortex reports</h1><p>{html.escape(period.label)}</p><ul>{links}</ul></body></html>\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="*", metavar="NAME",
                   help=f"reports to render (default: all of {', '.join(REPORTS)})")
    p.add_argument("--root", default=None, help="coordination root (default: $CORTEX_ROOT, else ./coordination)")
    p.add_argument("--from", dest="start", help="first day (YYYY-MM-DD) or time (RFC 3339)")
    p.add_argument("--to", dest="end", help="last day, included (YYYY-MM-DD), or end time (RFC 3339); default now")
    p.add_argument("--days", type=int, default=7, help="length of the period when --from is not given")
    p.add_argument("--out", required=True, help="directory for the HTML files")
    args = p.parse_args(argv)
    unknown = [n for n in args.reports if n not in REPORTS]
    if unknown:
        p.error(f"unknown report {', '.join(unknown)}: choose from {', '.join(REPORTS)}")
    names = args.reports or REPORTS
    try:
        period = cd.Period.parse(args.start, args.end, days=args.days)
        data = cd.Dataset(cd.options.root({"root": args.root}), period)
    except (ValueError, FileNotFoundError) as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / f"{name}.html"
        path.write_text(render(name, data), encoding="utf-8")
        print(f"wrote {path}")
    (out / "index.html").write_text(index(names, period), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
