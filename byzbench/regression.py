"""The CI regression gate: write a baseline of a run's final metrics, check a run against it.

A baseline (JSON) records, per cell, its axis values, its config hash (the cell id) and its
final metrics. Cells are matched between baseline and run by their axis values, so a cell
whose configuration changed under the same axes is reported as *config changed* rather
than as one missing and one new cell. A metric regresses when it is worse than the
baseline by more than its tolerance (accuracy and detection rate: lower is worse; false
positive rate and backdoor ASR: higher is worse); improvements pass and are listed.

A baseline also records each defense's worst-case accuracy per malicious fraction (and per
value of any extra axis): the lowest, over the attacks, of the accuracy averaged over seeds,
computed by :func:`byzbench.worstcase.worst_case` as the report's ranking does. It is
checked like a cell's metric, under the ``worst`` tolerance. A baseline written before
these entries existed (format 1) still reads; its missing entries count as entries not in
the baseline, which ``--allow-missing`` lets pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from byzbench import __version__
from byzbench.atomic import AtomicWriteError, write_text_atomic
from byzbench.store import ResultsStore
from byzbench.worstcase import attack_traits, worst_case

# metric → (direction: +1 higher is better / −1 lower is better, tolerance key)
METRICS: dict[str, tuple[int, str]] = {
    "accuracy": (+1, "accuracy"),
    "detection_rate": (+1, "detection"),
    "fpr": (-1, "fpr"),
    "asr": (-1, "asr"),
}
# metrics of a worst-case entry (one per defense and fraction, attacks and seeds pooled)
WORST_METRICS: dict[str, tuple[int, str]] = {
    "worst_accuracy": (+1, "worst"),
}
DEFAULT_TOLERANCES: dict[str, float] = {"accuracy": 0.02, "detection": 0.05, "fpr": 0.05,
                                        "asr": 0.05, "worst": 0.02}
BASELINE_FORMAT = 2   # 2: + "worst_case" entries; format 1 baselines still read
READABLE_FORMATS = (1, 2)
POOLED_AXES = ("attack", "seed")   # a worst-case entry's axes are a cell's without these
WORST_PREFIX = "worst case: "


class BaselineError(ValueError):
    """A baseline file or tolerance string that cannot be used."""


def axes_key(axes: Mapping[str, Any]) -> str:
    return json.dumps(axes, sort_keys=True, default=str)


def _metrics(row: Mapping[str, Any]) -> dict[str, float | None]:
    return {m: (None if row.get(m) is None else _finite_or_none(row[m])) for m in METRICS}


def worst_case_entries(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Worst-case accuracy per group of finished cells that share every axis but the
    attack and the seed (a defense at one fraction, per extra-axis value), from database
    rows of ``done`` cells; groups that ran only the benign baseline have no entry."""
    import pandas as pd

    if not rows:
        return []
    axes = [json.loads(row["axes"]) for row in rows]
    groups = [{k: v for k, v in a.items() if k not in POOLED_AXES} for a in axes]
    names = [json.loads(row["config"])["attack"]["name"] for row in rows]
    traits = {name: attack_traits(name) for name in set(names)}
    frame = pd.DataFrame({
        "group": [axes_key(g) for g in groups],
        "attack": [str(row["attack"]) for row in rows],
        "seed": [row["seed"] for row in rows],
        "accuracy": pd.to_numeric(pd.Series([row["accuracy"] for row in rows]),
                                  errors="coerce").astype(float),
        "benign": [traits[n].benign for n in names],
    })
    by_key = {axes_key(g): g for g in groups}
    worst = worst_case(frame, ["group"], samples=0)
    return [{"axes": by_key[r.group], "worst_attack": r.worst_attack, "attacks": r.attacks,
             "metrics": {"worst_accuracy": _finite_or_none(r.worst_accuracy)}}
            for r in worst.itertuples(index=False)]


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def make_baseline(results_dir: str | Path) -> dict[str, Any]:
    """The baseline of every finished (``done``) cell of a results directory, and the
    worst-case accuracy of each defense and fraction (:func:`worst_case_entries`).

    Cells that share their axes (a grid edited between runs leaves its earlier cells in the
    database) resolve to the one the latest run of the grid listed; axes still claimed by
    several cells are listed under ``"duplicates"`` (not part of a written baseline)."""
    with ResultsStore.open(results_dir) as store:
        rows = [r for r in store.cell_rows() if r["status"] == "done"]
        meta = store.meta()
    grids = sorted({r["grid"] for r in rows})
    current: set[str] = set()
    for grid in grids:
        try:
            current.update(json.loads(meta.get(f"cells:{grid}", "[]")))
        except (TypeError, ValueError):
            pass
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(axes_key(json.loads(row["axes"])), []).append(row)
    cells, kept, duplicates = [], [], []
    for group in by_key.values():
        if len(group) > 1:
            listed = [r for r in group if r["cell_id"] in current]
            if len(listed) == 1:
                group = listed
            else:
                duplicates.append(label(json.loads(group[0]["axes"])))
        row = group[-1]
        kept.append(row)
        cells.append({"cell_id": row["cell_id"], "axes": json.loads(row["axes"]),
                      "metrics": _metrics(row)})
    return {"format": BASELINE_FORMAT, "byzbench_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "grids": grids, "cells": cells,
            "worst_case": worst_case_entries(kept), "duplicates": duplicates}


def write_baseline(results_dir: str | Path, out: str | Path) -> dict[str, Any]:
    baseline = make_baseline(results_dir)
    if not baseline["cells"]:
        raise BaselineError(f"{results_dir} has no finished cell to make a baseline of")
    duplicates = baseline.pop("duplicates")
    if duplicates:
        raise BaselineError(f"{results_dir}: {len(duplicates)} cell(s) stored more than once "
                            f"under the same axes (e.g. {duplicates[0]}); re-run the grid "
                            "into a fresh results directory")
    path = Path(out)
    text = json.dumps(baseline, indent=1, sort_keys=True, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)  # a reader never sees half a baseline
    except OSError as exc:
        raise BaselineError(str(exc) if isinstance(exc, AtomicWriteError)
                            else f"cannot write baseline {path}: {exc.strerror or exc}"
                            ) from None
    return baseline


def read_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise BaselineError(f"{path}: not a byzbench baseline (expected a 'cells' list; "
                            "make one with 'byzbench baseline RESULTS_DIR -o FILE')")
    fmt_ = data.get("format", 1)  # the first baselines had no 'format' key
    if isinstance(fmt_, bool) or fmt_ not in READABLE_FORMATS:
        raise BaselineError(f"{path}: format: unknown baseline format {fmt_!r} (this byzbench "
                            f"{__version__} reads formats "
                            f"{', '.join(map(str, READABLE_FORMATS))}); rewrite it with "
                            "'byzbench baseline RESULTS_DIR -o FILE'")
    grids = data.get("grids")
    if grids is not None and not (isinstance(grids, list)
                                  and all(isinstance(g, str) for g in grids)):
        raise BaselineError(f"{path}: grids: expected a list of grid names (got {grids!r})")
    _check_entries(path, "cells", data["cells"], METRICS, ("cell_id",), "one entry per cell")
    worst = data.get("worst_case")
    if worst is not None:
        if not isinstance(worst, list):
            raise BaselineError(f"{path}: worst_case: expected a list of entries")
        _check_entries(path, "worst_case", worst, WORST_METRICS, (),
                       "one entry per defense and fraction")
    return data


def _check_entries(path: Path, name: str, entries: list[Any], allowed: Mapping[str, Any],
                   keys: tuple[str, ...], unique: str) -> None:
    """Each of ``entries`` (the baseline's list ``name``) is a mapping with ``axes``,
    ``metrics`` (finite, known) and ``keys``, and no two share their axes."""
    needed = ", ".join(f"'{k}'" for k in (*keys, "axes")) + " and 'metrics'"
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("axes"), dict)
                and isinstance(entry.get("metrics"), dict) and all(k in entry for k in keys)):
            raise BaselineError(f"{path}: {name}[{i}] needs {needed}")
        _check_metrics(path, f"{name}[{i}]", entry["metrics"], allowed)
        key = axes_key(entry["axes"])
        if key in seen:
            raise BaselineError(f"{path}: {name}[{i}] repeats the axes of {name}[{seen[key]}] "
                                f"({label(entry['axes'])}): {unique}")
        seen[key] = i


def _check_metrics(path: Path, where: str, metrics: Mapping[str, Any],
                   allowed: Mapping[str, Any]) -> None:
    for metric, value in metrics.items():
        if metric not in allowed:
            raise BaselineError(f"{path}: {where}.metrics.{metric}: unknown metric "
                                f"(allowed: {', '.join(allowed)})")
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, float))):
            raise BaselineError(f"{path}: {where}.metrics.{metric}: not a number "
                                f"(got {value!r})")
        if value is not None and not math.isfinite(value):
            raise BaselineError(f"{path}: {where}.metrics.{metric}: not a finite number "
                                f"(got {value!r}); a baseline holds finite values or null")


def parse_tolerances(text: str | None) -> dict[str, float]:
    """``accuracy=0.02,detection=0.05`` → the tolerances, defaults filled in."""
    tolerances = dict(DEFAULT_TOLERANCES)
    if not text:
        return tolerances
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in tolerances:
            raise BaselineError(f"--tolerance: '{part.strip()}' is not KEY=VALUE with KEY one "
                                f"of {', '.join(tolerances)}")
        try:
            number = float(value)
        except ValueError:
            raise BaselineError(f"--tolerance: {key}={value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise BaselineError(f"--tolerance: {key} must be a finite number ≥ 0")
        tolerances[key] = number
    return tolerances


@dataclass(frozen=True)
class Comparison:
    """One metric of one cell, baseline against now."""

    cell: str
    metric: str
    baseline: float | None
    now: float | None
    verdict: str  # ok | improved | regressed | missing value

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.now is None:
            return None
        return self.now - self.baseline


@dataclass
class CheckResult:
    comparisons: list[Comparison] = field(default_factory=list)
    missing_now: list[str] = field(default_factory=list)       # in baseline, not in the run
    duplicates: list[str] = field(default_factory=list)        # axes of several run cells
    new_cells: list[str] = field(default_factory=list)         # in the run, not in baseline
    config_changed: list[str] = field(default_factory=list)    # same axes, other config hash
    tolerances: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)             # said beside the verdicts

    @property
    def regressions(self) -> list[Comparison]:
        """Metrics worse than the baseline beyond their tolerance."""
        return [c for c in self.comparisons if c.verdict == "regressed"]

    @property
    def missing_values(self) -> list[Comparison]:
        """Metrics the baseline has that the run lacks or holds as NaN/±Inf: failures."""
        return [c for c in self.comparisons if c.verdict == "missing value"]

    @property
    def improvements(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "improved"]

    def passed(self, allow_missing: bool = False) -> bool:
        structural = (self.missing_now or self.new_cells or self.config_changed
                      or self.duplicates)
        return (not self.regressions and not self.missing_values
                and (allow_missing or not structural))

    def counts(self) -> list[tuple[str, int]]:
        """The summary, one row per kind of finding (none counted under another)."""
        return [("compared", len(self.comparisons)), ("regressed", len(self.regressions)),
                ("missing or non-finite value", len(self.missing_values)),
                ("improved", len(self.improvements)),
                ("configuration changed", len(self.config_changed)),
                ("missing in this run", len(self.missing_now)),
                ("not in the baseline", len(self.new_cells)),
                ("duplicated in this run", len(self.duplicates))]

    def summary_line(self) -> str:
        return ", ".join(f"{n} {what}" for what, n in self.counts()
                         if n or what in ("compared", "regressed", "improved"))


def label(axes: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in axes.items())


def _compare_metrics(result: CheckResult, name: str, old: Mapping[str, Any],
                     new: Mapping[str, Any], metrics: Mapping[str, tuple[int, str]]) -> None:
    """Append one :class:`Comparison` per metric that either side has."""
    for metric, (direction, tol_key) in metrics.items():
        was, now = old.get(metric), new.get(metric)
        if was is None and now is None:
            continue
        if was is None:
            verdict = "ok"  # a metric the baseline did not have: nothing to regress from
        elif now is None or not math.isfinite(now) or not math.isfinite(was):
            verdict = "missing value"  # never a pass: NaN compares as neither worse nor better
        else:
            change = (now - was) * direction
            tol = result.tolerances[tol_key]
            verdict = ("regressed" if change < -tol - 1e-12 else
                       "improved" if change > tol + 1e-12 else "ok")
        result.comparisons.append(Comparison(name, metric, was, now, verdict))


def _match(result: CheckResult, base: list[Mapping[str, Any]],
           current: list[Mapping[str, Any]], metrics: Mapping[str, tuple[int, str]],
           prefix: str = "") -> None:
    """Match baseline and run entries by their axes; compare the pairs' ``metrics``, list
    the unmatched ones, and (for cells) the pairs whose config hash differs."""
    now_by_key = {axes_key(c["axes"]): c for c in current}
    base_by_key = {axes_key(c["axes"]): c for c in base}
    for key, old in base_by_key.items():
        new = now_by_key.get(key)
        name = prefix + label(old["axes"])
        if new is None:
            result.missing_now.append(name)
            continue
        if "cell_id" in old and new.get("cell_id") != old["cell_id"]:
            result.config_changed.append(name)
        _compare_metrics(result, name, old["metrics"], new["metrics"], metrics)
    result.new_cells += [prefix + label(c["axes"]) for k, c in now_by_key.items()
                         if k not in base_by_key]


def compare(baseline: Mapping[str, Any], results_dir: str | Path,
            tolerances: Mapping[str, float]) -> CheckResult:
    """Compare a run's finished cells, and its worst-case accuracies, with a baseline."""
    now = make_baseline(results_dir)
    base_grids, now_grids = baseline.get("grids") or [], now["grids"]
    if base_grids and now_grids and not set(base_grids) & set(now_grids):
        raise BaselineError(f"the baseline is of grid {', '.join(map(repr, base_grids))} but "
                            f"{results_dir} holds grid {', '.join(map(repr, now_grids))}: "
                            "check a run of the baseline's grid")
    result = CheckResult(tolerances={**DEFAULT_TOLERANCES, **tolerances},
                         duplicates=list(now["duplicates"]))
    _match(result, baseline["cells"], now["cells"], METRICS)
    base_worst = baseline.get("worst_case")
    if base_worst is None and now["worst_case"]:
        result.notes.append("the baseline has no worst-case entries (it predates them): "
                            "they count as not in the baseline; rewrite it with "
                            "'byzbench baseline RESULTS_DIR -o FILE' to gate on them")
    _match(result, base_worst or [], now["worst_case"], WORST_METRICS, WORST_PREFIX)
    return result


def markdown(result: CheckResult, allow_missing: bool = False) -> str:
    """The check as a Markdown section (for GITHUB_STEP_SUMMARY)."""
    status = "passed" if result.passed(allow_missing) else "FAILED"
    lines = [f"## byzbench check: {status}", "",
             "| finding | count |", "|---|---:|",
             *(f"| {what} | {n} |" for what, n in result.counts()), "",
             "tolerances " + ", ".join(f"{k}={v}" for k, v in result.tolerances.items()), "",
             "| cell | metric | baseline | now | delta | verdict |", "|---|---|---|---|---|---|"]
    for c in result.comparisons:
        lines.append(f"| {c.cell} | {c.metric} | {fmt(c.baseline)} | {fmt(c.now)} | "
                     f"{fmt(c.delta, signed=True)} | {c.verdict} |")
    for title, names in (("missing in this run", result.missing_now),
                         ("not in the baseline", result.new_cells),
                         ("configuration changed", result.config_changed),
                         ("duplicated in this run", result.duplicates)):
        if names:
            lines += ["", f"**{title}**: " + "; ".join(names)]
    lines += ["", *(f"> {note}" for note in result.notes)] if result.notes else []
    return "\n".join(lines) + "\n"


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
