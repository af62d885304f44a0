"""The report page builder and the renderer's command line, on a tiny
hand-made root: figures are named and escaped, tables and checklists
render, an unknown report or a bad period is refused."""

from __future__ import annotations

import sys

import polars as pl

from conftest import REPO

sys.path.insert(0, str(REPO / "reports"))
from page import Page  # noqa: E402


def test_figures_are_named_escaped_and_keep_their_raw_value():
    page = Page("A <title>", "sub")
    page.figure("cost_usd", 12.345678, "cost", shown="$12.35")
    page.figure("worker", "<script>x</script>", "who")
    out = page.html()
    assert 'data-figure="cost_usd" data-value="12.345678">$12.35<' in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<title>A &lt;title&gt;</title>" in out


def test_tables_checklists_and_empty_tables():
    page = Page("t", "s")
    page.table(pl.DataFrame({"name": ["a"], "n": [1234]}), name="t1")
    page.table(pl.DataFrame(schema={"x": pl.Int64}), empty="Nothing here.")
    page.checklist([("scans ran", True, "all"), ("no criticals", False, "2 open")])
    out = page.html()
    assert '<table data-table="t1">' in out and '<td class="num">1,234</td>' in out
    assert '<p class="empty">Nothing here.</p>' in out
    assert '<td class="check-fail">FAIL</td><td>no criticals</td>' in out


def render(capsys, *args) -> tuple[int, str]:
    """Runs render.py's main in this process: (exit code, stderr)."""
    import render as renderer

    try:
        code = renderer.main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


def test_render_refuses_unknown_reports_and_bad_periods(tmp_path, capsys):
    (tmp_path / "root" / "events").mkdir(parents=True)
    code, err = render(capsys, "weekly", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"))
    assert code == 2 and "unknown report weekly" in err
    code, err = render(capsys, "--root", str(tmp_path / "root"), "--from", "2026-12-05", "--to", "2026-12-01",
                       "--out", str(tmp_path))
    assert code == 1 and "the period is empty" in err
    code, err = render(capsys, "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert code == 1 and "not a coordination root" in err


def test_an_empty_root_renders_every_report(tmp_path, capsys):
    (tmp_path / "root" / "events").mkdir(parents=True)
    code, err = render(capsys, "--root", str(tmp_path / "root"), "--days", "3", "--out", str(tmp_path / "out"))
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["cost-report.html", "index.html", "security-audit.html", "weekly-summary.html"]
    assert 'data-figure="events" data-value="0"' in (tmp_path / "out" / "weekly-summary.html").read_text()
