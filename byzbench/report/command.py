"""The ``byzbench report`` command (registered in :mod:`byzbench.cli` with
``app.command("report")(report)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from byzbench.console import EXIT_USAGE, console, fail


def report(
    results_dir: Annotated[Path, typer.Argument(help="results directory of a run (holding "
                                                     "results.db)", metavar="RESULTS_DIR")],
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR",
                                             help="where to write the files "
                                                  "\\[default: RESULTS_DIR/report]")] = None,
    formats: Annotated[list[str] | None, typer.Option(
        "--format", "-f", metavar="FORMAT",
        help="any of table (terminal), md (report.md + PNGs), csv (one tidy CSV per table), "
             "html (self-contained report.html); repeat or separate with commas "
             "\\[default: table,md,csv,html]")] = None,
    fraction: Annotated[list[str] | None, typer.Option(
        "--fraction", metavar="FRACTION", help="only these malicious fractions (0.2 or 20%; repeatable, "
                           "comma-separated)")] = None,
    attack: Annotated[list[str] | None, typer.Option(
        "--attack", metavar="ATTACK", help="only these attacks (label or registered name; repeatable, "
                         "comma-separated); the no-attack cells still give the accuracy "
                         "drop")] = None,
    defense: Annotated[list[str] | None, typer.Option(
        "--defense", metavar="DEFENSE", help="only these defenses (label or registered name; repeatable, "
                          "comma-separated)")] = None,
    reference: Annotated[Path | None, typer.Option(
        "--reference", metavar="FILE", help="YAML file of claimed values per defense with their source, "
                            "shown beside the measured ones (e.g. "
                            "configs/references/seed_document.yaml)")] = None,
    curves: Annotated[list[str] | None, typer.Option(
        "--curves", metavar="KEY=VALUE,...",
        help="cells to draw over rounds, e.g. attack=alie,defense=krum (same key twice = "
             "either; repeatable) \\[default: every defense under the hardest attack at the "
             "largest fraction]")] = None,
) -> None:
    """Tables and plots of a results directory: detection, accuracy, backdoor ASR, cost and
    privacy per defense, in the terminal and as files."""
    from byzbench.report.build import build_report, parse_formats, write_report
    from byzbench.report.data import ReportError
    from byzbench.report.writers import print_tables

    try:
        chosen = parse_formats(formats)
        built = build_report(results_dir, fractions=fraction, attacks=attack, defenses=defense,
                             reference=reference, curves=curves)
        base = results_dir if results_dir.is_dir() else results_dir.parent
        written = write_report(built, out if out is not None else base / "report", chosen)
    except ReportError as exc:
        fail(str(exc), EXIT_USAGE)
        return
    if "table" in chosen:
        print_tables(built, console)
    if written:
        console.print()
        console.print(f"[bold]report files[/] in {written[0].parent}: "
                      + ", ".join(p.name for p in written), highlight=False, soft_wrap=True)
