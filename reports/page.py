"""One self-contained HTML report page: inline CSS, charts inlined as SVG,
no script and no external reference, so the file opens anywhere with no
network.

A report's `build(data, page)` adds figures, charts, tables and text in
order; `page.html()` returns the document. Every figure is printed inside
`<span data-figure="NAME">`, so a test (or a script) can read the numbers a
reader sees.
"""

from __future__ import annotations

import datetime as dt
import html

import polars as pl

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0;
       background: #f6f6f4; }
main { max-width: 980px; margin: 0 auto; padding: 28px 32px 48px; background: #fff; }
header { border-bottom: 3px solid #243b55; margin-bottom: 18px; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin-top: 34px; font-size: 19px; color: #243b55; }
.meta { color: #666; margin: 0 0 12px; font-size: 13px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.figure { border: 1px solid #e2e2e2; border-radius: 6px; padding: 8px 10px; }
.figure .value { display: block; font-size: 22px; font-weight: 600; }
.figure .label { color: #555; font-size: 12px; }
.figure.bad .value { color: #b3261e; } .figure.good .value { color: #1b7f3b; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e6e6e6; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { margin: 10px 0; overflow-x: auto; } .chart svg { max-width: 100%; height: auto; }
ul.advice li { margin-bottom: 6px; } .check-pass { color: #1b7f3b; } .check-fail { color: #b3261e; }
.empty { color: #777; font-style: italic; } footer { margin-top: 40px; color: #777; font-size: 12px; }
"""


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (dt.datetime,)):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


class Page:
    def __init__(self, title: str, subtitle: str):
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []
        self._figures: list[str] | None = None

    def _flush(self):
        if self._figures is not None:
            self.parts.append('<div class="figures">' + "".join(self._figures) + "</div>")
            self._figures = None

    def heading(self, text: str):
        self._flush()
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str):
        self._flush()
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, name: str, value, label: str, *, shown: str | None = None, tone: str = ""):
        """A named number; `shown` is its display text (the raw value stays
        in `data-value` when they differ)."""
        if self._figures is None:
            self._figures = []
        raw = html.escape(str(value), quote=True)
        text = html.escape(shown if shown is not None else _text(value))
        self._figures.append(
            f'<div class="figure {tone}"><span class="value" data-figure="{html.escape(name)}" data-value="{raw}">'
            f'{text}</span><span class="label">{html.escape(label)}</span></div>')

    def chart(self, svg: str):
        self._flush()
        # vl-convert's SVG is a whole document: keep only the <svg> element.
        start = svg.find("<svg")
        self.parts.append(f'<div class="chart">{svg[start:] if start >= 0 else svg}</div>')

    def table(self, frame: pl.DataFrame, columns: list[str] | None = None, *, name: str | None = None,
              empty: str = "None."):
        self._flush()
        if frame.is_empty():
            self.parts.append(f'<p class="empty">{html.escape(empty)}</p>')
            return
        columns = columns or frame.columns
        attr = f' data-table="{html.escape(name)}"' if name else ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        rows = []
        for row in frame.select(columns).iter_rows():
            cells = "".join(
                f'<td class="num">{html.escape(_text(v))}</td>'
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                else f"<td>{html.escape(_text(v))}</td>" for v in row)
            rows.append(f"<tr>{cells}</tr>")
        self.parts.append(f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def bullets(self, items: list[str], css: str = "advice"):
        self._flush()
        self.parts.append(f'<ul class="{css}">' + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def checklist(self, checks: list[tuple[str, bool, str]]):
        """(check, passed, detail) rows."""
        self._flush()
        rows = "".join(
            f'<tr><td class="{"check-pass" if ok else "check-fail"}">{"pass" if ok else "FAIL"}</td>'
            f"<td>{html.escape(what)}</td><td>{html.escape(detail)}</td></tr>" for what, ok, detail in checks)
        self.parts.append(f'<table data-table="checklist"><thead><tr><th></th><th>check</th><th>detail</th></tr>'
                          f"</thead><tbody>{rows}</tbody></table>")

    def html(self, generated: dt.datetime | None = None) -> str:
        self._flush()
        generated = generated or dt.datetime.now(dt.timezone.utc)
        return (
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body><main>"
            f"<header><h1>{html.escape(self.title)}</h1><p class=\"meta\">{html.escape(self.subtitle)}</p></header>"
            + "\n".join(self.parts)
            + f"<footer>Generated {generated:%Y-%m-%d %H:%M} UTC by reports/render.py from the coordination root; "
            "figures are computed by analysis/cortexdata.</footer></main></body></html>\n"
        )
