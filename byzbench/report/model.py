"""The computed report (:class:`Report`): what :mod:`byzbench.report.build` produces and
:mod:`byzbench.report.writers` renders, so neither module needs the other's code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from byzbench.report.data import ReportData
    from byzbench.report.plots import Plot
    from byzbench.report.tables import ReportTable


@dataclass
class Report:
    """Everything a report shows, computed; the writers only render it."""

    data: ReportData
    tables: list[ReportTable]
    comparative: pd.DataFrame
    accuracy: pd.DataFrame
    curves: pd.DataFrame
    curves_why: str
    header: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"byzbench report: {', '.join(self.data.grids) or self.data.directory}"


__all__ = ["Report"]
