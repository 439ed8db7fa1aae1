"""Rendering a :class:`~byzbench.report.model.Report`: tidy CSVs, markdown with the PNGs,
a self-contained HTML file (images inlined as base64), and rich tables for the terminal."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from byzbench.atomic import write_atomic, write_text_atomic

if TYPE_CHECKING:
    from rich.console import Console

    from byzbench.report.model import Report
    from byzbench.report.tables import ReportTable


# -- CSV ------------------------------------------------------------------------------------

def write_csvs(report: Report, out: Path) -> list[Path]:
    """One tidy CSV per table (and ``curves.csv``); rates as fractions in [0, 1]."""
    paths = []
    for table in report.tables:
        path = out / f"{table.key}.csv"
        write_atomic(path, lambda tmp, frame=table.tidy: frame.to_csv(tmp, index=False))
        paths.append(path)
    if not report.curves.empty:
        path = out / "curves.csv"
        curves = report.curves
        if not curves["variant"].astype(str).str.len().any():
            curves = curves.drop(columns=["variant"])
        write_atomic(path, lambda tmp: curves.to_csv(tmp, index=False))
        paths.append(path)
    return paths


# -- markdown -------------------------------------------------------------------------------

def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


_NUMBER = re.compile(r"^[-+]?\d")
_NEUTRAL = {"n/a", "–", "skipped", "failed", "not run", "no finished cell", "not measured", ""}


def numeric_columns(frame: pd.DataFrame) -> list[bool]:
    """Per column: right-align it (every entry a number, or n/a, –, skipped…)."""
    out = []
    for i, column in enumerate(frame.columns):
        values = [str(v) for v in frame[column]]
        out.append(i > 0 and all(_NUMBER.match(v) or v in _NEUTRAL for v in values)
                   and any(_NUMBER.match(v) for v in values))
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if right else ":---"
                          for right in numeric_columns(frame)) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _md_section(table: ReportTable, level: str = "##") -> list[str]:
    lines = [f"{level} {table.title}", ""]
    if not table.sections:
        lines += [f"*{table.empty_note or 'nothing to show'}*", ""]
    for section in table.sections:
        if section.title:
            lines += [f"**{section.title}**", ""]
        lines += [markdown_table(section.frame), ""]
    lines += [f"*{table.caption}*", ""]
    lines += [f"> {note}" for note in table.notes]
    if table.notes:
        lines.append("")
    return lines


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- {line}" for line in report.header] + [""]
    for table in report.tables:
        lines += _md_section(table)
    if report.plots:
        lines += ["## Plots", ""]
        for plot in report.plots:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.path.name})", "",
                      f"*{plot.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(report: Report, path: Path) -> Path:
    return write_text_atomic(path, render_markdown(report))


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; text-align: right;
         white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
td.wrap { white-space: normal; text-align: left; max-width: 40em; }
td.left { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.caption { color: #555; font-size: 0.88em; max-width: 75em; }
.scroll { overflow-x: auto; }
figure { margin: 1.2em 0; } img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.88em; max-width: 75em; }
"""


WRAP = ' class="wrap"'
LEFT = ' class="left"'


def _html_table(frame: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    wrap = {i for i, c in enumerate(frame.columns) if str(c) in ("reason", "attacks", "source")}
    left = {i for i, right in enumerate(numeric_columns(frame)) if not right} - wrap
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td{WRAP if i in wrap else (LEFT if i in left else '')}>"
                        f"{esc(str(v))}</td>" for i, v in enumerate(row))
        rows.append(f"<tr>{cells}</tr>")
    return (f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def render_html(report: Report) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{esc(report.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(report.title)}</h1>", "<ul>"]
    parts += [f"<li>{esc(line)}</li>" for line in report.header]
    parts.append("</ul>")
    for table in report.tables:
        parts.append(f"<h2 id=\"{esc(table.key)}\">{esc(table.title)}</h2>")
        if not table.sections:
            parts.append(f"<p><em>{esc(table.empty_note or 'nothing to show')}</em></p>")
        for section in table.sections:
            if section.title:
                parts.append(f"<h3>{esc(section.title)}</h3>")
            parts.append(_html_table(section.frame))
        parts.append(f"<p class=\"caption\">{esc(table.caption)}</p>")
        parts += [f"<p class=\"caption\"><strong>{esc(n)}</strong></p>" for n in table.notes]
    if report.plots:
        parts.append("<h2 id=\"plots\">Plots</h2>")
    for plot in report.plots:
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        parts.append(f"<figure id=\"{esc(plot.key)}\"><h3>{esc(plot.title)}</h3>"
                     f"<img alt=\"{esc(plot.title)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{esc(plot.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(report: Report, path: Path) -> Path:
    return write_text_atomic(path, render_html(report))


# -- terminal -------------------------------------------------------------------------------

def _column_groups(frame: pd.DataFrame, width: int) -> list[list[str]]:
    """Columns split into groups that fit ``width`` (the first column repeated in each);
    wrapping columns (reasons) never force a split."""
    columns = [str(c) for c in frame.columns]
    if len(columns) <= 2:
        return [columns]

    def natural(column: str) -> int:
        if column in WRAPPING:
            return 24
        values = frame[column].astype(str)
        return max([len(column), *(len(v) for v in values)]) + 3

    first = natural(columns[0]) + 1
    groups: list[list[str]] = [[]]
    used = first
    for column in columns[1:]:
        need = natural(column)
        if groups[-1] and used + need > width:
            groups.append([])
            used = first
        groups[-1].append(column)
        used += need
    return [[columns[0], *group] for group in groups]


WRAPPING = ("reason", "attacks")


def print_tables(report: Report, console: Console) -> None:
    """The tables as rich tables, with their captions; a table wider than the terminal is
    printed in parts, each repeating the first column. Output that is not a terminal (a CI
    log) gets each table whole, as plain markdown lines."""
    from rich.table import Table
    from rich.text import Text

    for line in report.header:
        console.print(Text(line), style="dim")
    for table in report.tables:
        console.print()
        console.rule(f"[bold]{table.title}")
        if not table.sections:
            console.print(Text(table.empty_note or "nothing to show", style="italic"))
        for section in table.sections:
            frame = section.frame.copy()
            frame.columns = [str(c) for c in frame.columns]
            if not console.is_terminal:  # CI logs, files: one unsplit plain table
                if section.title:
                    console.print(Text(section.title, style="bold"))
                for line in markdown_table(frame).splitlines():
                    console.print(Text(line), soft_wrap=True)
                continue
            groups = _column_groups(frame, console.width)
            right = dict(zip(frame.columns, numeric_columns(frame)))
            for part, columns in enumerate(groups):
                title = section.title or ""
                if len(groups) > 1:
                    title = f"{title} (part {part + 1} of {len(groups)})".strip()
                rich_table = Table(title=title or None, title_justify="left",
                                   header_style="bold")
                for i, column in enumerate(columns):
                    wide = column in WRAPPING
                    rich_table.add_column(column, justify="right" if right[column] else "left",
                                          no_wrap=not wide, style="bold" if i == 0 else None)
                for row in frame[columns].itertuples(index=False):
                    rich_table.add_row(*(Text(str(v), style=_style(str(v))) for v in row))
                console.print(rich_table)
        console.print(Text(table.caption, style="dim"))
        for note in table.notes:
            console.print(Text(note, style="yellow"))


def _style(value: str) -> str:
    if value in ("n/a", "–"):
        return "dim"
    if value in ("skipped", "failed", "not run"):
        return "yellow" if value != "failed" else "red"
    return ""
