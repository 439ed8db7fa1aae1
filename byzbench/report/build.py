"""Assembling a report: read the results, compute every table, then write what was asked.

    report = build_report("results/seed_table",
                          reference="configs/references/seed_document.yaml")
    written = write_report(report, "docs/reports/seed_table", formats={"md", "csv"})

``build_report`` reads and computes (no files written); ``write_report`` draws the plots
into the output directory when a document embeds them (md, html) and writes the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from byzbench.atomic import AtomicWriteError
from byzbench.report import writers
from byzbench.report.curves import curves_frame, select_cells
from byzbench.report.data import ReportData, ReportError, load
from byzbench.report.model import Report
from byzbench.report.plots import all_plots
from byzbench.report.published import published_tables
from byzbench.report.ranking import ranking_table
from byzbench.report.reference import load_reference_file, reference_table
from byzbench.report.tables import (
    accuracy_frame,
    accuracy_table,
    backdoor_table,
    comparative_frame,
    comparative_table,
    detection_table,
    durability_table,
    privacy_table,
    skipped_table,
)

FORMATS = ("table", "md", "csv", "html")
DEFAULT_FORMATS = ("table", "md", "csv", "html")


def parse_formats(values: Sequence[str] | None) -> list[str]:
    """Repeatable / comma-separated ``--format`` values, validated, in canonical order."""
    if not values:
        return list(DEFAULT_FORMATS)
    wanted = {part.strip().lower() for value in values for part in str(value).split(",")
              if part.strip()}
    if "markdown" in wanted:
        wanted = (wanted - {"markdown"}) | {"md"}
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise ReportError(f"--format: unknown format '{unknown[0]}' (allowed: "
                          f"{', '.join(FORMATS)}; repeat the option or separate with commas)")
    if not wanted:
        raise ReportError(f"--format: no format given (allowed: {', '.join(FORMATS)})")
    return [f for f in FORMATS if f in wanted]


def _header(data: ReportData) -> list[str]:
    counts = data.cells["status"].value_counts()
    lines = [f"results: {data.directory}",
             f"grid: {', '.join(data.grids)}" + (f" — {data.description.strip()}"
                                                  if data.description.strip() else ""),
             f"cells: {int(counts.get('done', 0))} done, {int(counts.get('skipped', 0))} "
             f"skipped, {int(counts.get('failed', 0))} failed"]
    if data.filters:
        lines.append("filters: " + "; ".join(f"--{k} {', '.join(v)}"
                                              for k, v in data.filters.items()))
    if data.extra_axes:
        lines.append(f"extra axes (shown in brackets after the defense): "
                     f"{', '.join(data.extra_axes)}")
    if data.not_run:
        again = f"byzbench run {data.source}" if data.source else "byzbench run GRID"
        lines.append(f"partial results: {data.not_run} of the grid's {data.grid_size} cells "
                     f"have no result yet; these tables cover the other "
                     f"{data.grid_size - data.not_run} ('{again}' runs the rest)")
    if data.stale:
        lines.append(f"{data.stale} cells of an earlier version of the grid are not reported "
                     "(their configuration is no longer in the grid file)")
    return lines


def build_report(results_dir: str | Path, fractions: Sequence[str] | None = None,
                 attacks: Sequence[str] | None = None, defenses: Sequence[str] | None = None,
                 reference: str | Path | None = None,
                 curves: Sequence[str] | None = None) -> Report:
    """Read ``results_dir`` and compute every table; raises :class:`ReportError` (the
    reference file's errors included) for input the report cannot use."""
    ref = load_reference_file(reference) if reference is not None else None
    data = load(results_dir, fractions=fractions, attacks=attacks, defenses=defenses)
    comparative = comparative_frame(data)
    accuracy = accuracy_frame(data)
    chosen, why = select_cells(data, curves)
    tables = [ranking_table(data, comparative), comparative_table(data, comparative)]
    if ref is not None and ref.claims:
        tables.append(reference_table(ref.claims, ref.description, comparative, reference))
    if ref is not None and (ref.table or not ref.claims):
        tables += published_tables(ref.table, data.done, Path(reference).name
                                   + (f" ({ref.description})" if ref.description else ""))
    tables += [accuracy_table(data), detection_table(data), backdoor_table(data),
               durability_table(data)]
    measured_privacy = privacy_table(data)
    if measured_privacy is not None:
        tables.append(measured_privacy)
    tables.append(skipped_table(data))
    return Report(data=data, tables=tables, comparative=comparative, accuracy=accuracy,
                  curves=curves_frame(data, chosen), curves_why=why, header=_header(data))


def write_report(report: Report, out: str | Path, formats: Iterable[str]) -> list[Path]:
    """Write the asked file formats (md, csv, html; 'table' writes nothing) into ``out``;
    returns the files written."""
    formats = set(formats)
    out = Path(out)
    written: list[Path] = []
    if not formats & {"md", "csv", "html"}:
        return written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report directory {out}: {exc.strerror}") from None
    try:
        if formats & {"md", "html"}:
            report.plots = all_plots(report.data, report.accuracy, report.curves,
                                     report.curves_why, out)
            written += [p.path for p in report.plots]
        if "csv" in formats:
            written += writers.write_csvs(report, out)
        if "md" in formats:
            written.append(writers.write_markdown(report, out / "report.md"))
        if "html" in formats:
            written.append(writers.write_html(report, out / "report.html"))
    except AtomicWriteError as exc:
        done = f" ({len(written)} files written before it, each complete)" if written else ""
        raise ReportError(f"{exc}{done}") from None
    return written
