"""``--reference FILE``: claimed values (from a paper, a design document) beside measured ones.

The file is YAML::

    description: what these claims are          # optional
    source: "seed document"                     # optional default source of every claim
    defenses:
      krum:                                     # a defense label or registered name
        claimed_as: Krum                        # optional: the name the source uses
        source: "seed document"                 # required here unless given above
        detection_rate: 68%                     # "68%" or 0.68
        accuracy: {value: 0.91, source: "their Table 2"}   # a claim with its own source

A reference may also (or instead) hold a paper's published table under ``table:`` — one
entry per (attack, defense) cell with its table, column, metric, value and source; those
are compared cell by cell and by the orderings of the defenses per attack
(:mod:`byzbench.report.published`).

Metrics: detection_rate, fpr, precision, f1, accuracy (mean under attack),
worst_accuracy, accuracy_drop, asr (backdoor), as fractions in [0, 1] or percentages
written "68%" (accuracy_drop may be negative); agg_ms in milliseconds. Each claim is
compared with the comparative analysis's measured value: difference = measured − claimed
(percentage points for rates). Every mistake raises :class:`ReferenceFileError` naming the
file and the key.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from byzbench.report.data import FRACTION, ReportError
from byzbench.report.published import ENTRY_KEYS, ENTRY_REQUIRED, TABLE_METRICS, Published
from byzbench.report.tables import DASH, NA, ReportTable, Section, pct, row_label
from byzbench.yamlfile import load_yaml

# metric → (column of the comparative frame, kind, display name)
METRICS: dict[str, tuple[str, str, str]] = {
    "detection_rate": ("detection_rate", "rate", "detection rate"),
    "fpr": ("fpr", "rate", "false-positive rate"),
    "precision": ("precision", "rate", "precision"),
    "f1": ("f1", "rate", "F1"),
    "accuracy": ("accuracy_mean", "rate", "accuracy under attack"),
    "worst_accuracy": ("worst_accuracy_mean", "rate", "worst accuracy"),
    "accuracy_drop": ("accuracy_drop_mean", "signed_rate", "accuracy drop"),
    "asr": ("asr_mean", "rate", "backdoor ASR"),
    "agg_ms": ("agg_ms", "ms", "aggregation ms/round"),
}
DETECTION = {"detection_rate", "fpr", "precision", "f1"}
_STD = {"detection_rate": "detection_rate_std", "fpr": "fpr_std",
        "precision": "precision_std", "f1": "f1_std",
        "accuracy": "accuracy_std", "worst_accuracy": "worst_accuracy_std",
        "accuracy_drop": "accuracy_drop_std", "asr": "asr_std"}
_TOP_KEYS = ("description", "source", "defenses", "table")
_DEFENSE_KEYS = ("claimed_as", "source")


class ReferenceFileError(ReportError):
    """A reference file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Claim:
    defense: str          # the key: a defense label or registered name
    claimed_as: str       # the name the source uses
    metric: str
    value: float          # fraction for rates, ms for agg_ms
    source: str


def _fail(path: Path, key: str, message: str) -> None:
    raise ReferenceFileError(f"reference file {path}: {key}: {message}")


def _suggest(word: str, options: Any) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _value(path: Path, key: str, metric: str, raw: Any) -> float:
    kind = METRICS[metric][1]
    percent = False
    if isinstance(raw, str):
        text = raw.strip()
        percent = text.endswith("%")
        try:
            value = float(text.removesuffix("%").strip())
        except ValueError:
            _fail(path, key, f"not a number: {raw!r} (write 0.68 or \"68%\")")
        if percent and kind == "ms":
            _fail(path, key, f"agg_ms is in milliseconds, not a percentage (got {raw!r})")
        if percent:
            value /= 100.0
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        _fail(path, key, f"expected a number or a percentage like \"68%\" (got {raw!r})")
    if not math.isfinite(value):
        _fail(path, key, f"not a finite number (got {raw!r})")
    if kind == "ms" and value < 0:
        _fail(path, key, f"a time cannot be negative (got {raw!r})")
    low = -1.0 if kind == "signed_rate" else 0.0
    if kind != "ms" and not low <= value <= 1.0:
        hint = "" if percent else f" (for {raw}% write \"{raw}%\")"
        _fail(path, key, f"a rate must lie in [{low:g}, 1] or be a percentage{hint} "
                         f"(got {raw!r})")
    return value


@dataclass(frozen=True)
class Reference:
    """A parsed reference file: per-defense claims and published table entries."""

    path: Path
    claims: list[Claim]
    description: str
    table: list[Published]


def load_reference(path: str | Path) -> tuple[list[Claim], str]:
    """Parse and validate a reference file: (claims, description)."""
    ref = load_reference_file(path)
    return ref.claims, ref.description


def _table_entries(path: Path, raw: Any, default_source: str | None) -> list[Published]:
    if not isinstance(raw, list):
        _fail(path, "table", f"must be a list of published cells (got {raw!r}); an empty "
                             "list [] says that no published value has been verified yet")
    entries: list[Published] = []
    for i, item in enumerate(raw):
        where = f"table[{i}]"
        if not isinstance(item, dict):
            _fail(path, where, f"must be a mapping with keys {', '.join(ENTRY_REQUIRED)} "
                               f"(got {item!r})")
        for key in item:
            if key not in ENTRY_KEYS:
                _fail(path, f"{where}.{key}", f"unknown key{_suggest(str(key), ENTRY_KEYS)} "
                                              f"(allowed: {', '.join(ENTRY_KEYS)})")
        for key in ENTRY_REQUIRED:
            if key not in item:
                _fail(path, f"{where}.{key}", "missing (every published cell needs "
                                              f"{', '.join(ENTRY_REQUIRED)} and a source)")
        for key in ("table", "column", "attack", "defense", "claimed_as", "source"):
            if key in item and not isinstance(item[key], str):
                _fail(path, f"{where}.{key}", f"must be a string (got {item[key]!r})")
        metric = item["metric"]
        if metric not in TABLE_METRICS:
            _fail(path, f"{where}.metric", f"unknown metric {metric!r}"
                                           f"{_suggest(str(metric), TABLE_METRICS)} (allowed: "
                                           f"{', '.join(TABLE_METRICS)})")
        value = _value(path, f"{where}.value", "accuracy", item["value"])
        source = item.get("source", default_source)
        if not source:
            _fail(path, f"{where}.source", "every published cell needs its source (give "
                                           "'source' for the cell or the file)")
        fraction = item.get(FRACTION)
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                    or not 0 <= fraction < 1:
                _fail(path, f"{where}.{FRACTION}", f"must be a fraction in [0, 1) "
                                                   f"(got {fraction!r})")
            fraction = float(fraction)
        entries.append(Published(
            table=item["table"], column=item.get("column", item["attack"]),
            attack=item["attack"], defense=item["defense"],
            claimed_as=item.get("claimed_as", item["defense"]), metric=metric, value=value,
            source=str(source), fraction=fraction))
    seen: set[tuple[str, str, str, str, float | None]] = set()
    for i, e in enumerate(entries):
        key = (e.table, e.column, e.defense, e.metric, e.fraction)
        if key in seen:
            _fail(path, f"table[{i}]", f"duplicate cell: {e.table}, {e.column}, {e.defense}, "
                                       f"{e.metric}")
        seen.add(key)
    return entries


def load_reference_file(path: str | Path) -> Reference:
    """Parse and validate a reference file: claims per defense and published table cells."""
    path = Path(path)
    raw = load_yaml(path, ReferenceFileError, "reference file")
    if not isinstance(raw, dict):
        _fail(path, "<top level>", "must be a mapping with a 'defenses' key")
    for key in raw:
        if key not in _TOP_KEYS:
            _fail(path, str(key), f"unknown key{_suggest(str(key), _TOP_KEYS)} (allowed: "
                                  f"{', '.join(_TOP_KEYS)})")
    default_source = raw.get("source")
    if default_source is not None and not isinstance(default_source, str):
        _fail(path, "source", f"must be a string (got {default_source!r})")
    table = _table_entries(path, raw["table"], default_source) if "table" in raw else []
    defenses = raw.get("defenses")
    if "table" in raw and defenses is None:
        defenses = {}
    elif not isinstance(defenses, dict) or not defenses:
        _fail(path, "defenses", "must map defense names to their claimed values "
                                f"(got {defenses!r}), or give a published 'table'")
    claims: list[Claim] = []
    for name, entry in defenses.items():
        where = f"defenses.{name}"
        if not isinstance(entry, dict):
            _fail(path, where, f"must be a mapping of metrics and a source (got {entry!r})")
        source = entry.get("source", default_source)
        claimed_as = entry.get("claimed_as", str(name))
        for key, what in (("source", source), ("claimed_as", claimed_as)):
            if key in entry and not isinstance(what, str):
                _fail(path, f"{where}.{key}", f"must be a string (got {what!r})")
        metrics = {k: v for k, v in entry.items() if k not in _DEFENSE_KEYS}
        if not metrics:
            _fail(path, where, f"no claimed value (metrics: {', '.join(METRICS)})")
        for metric, raw_value in metrics.items():
            key = f"{where}.{metric}"
            if metric not in METRICS:
                _fail(path, key, f"unknown metric{_suggest(str(metric), METRICS)} (allowed: "
                                 f"{', '.join((*METRICS, *_DEFENSE_KEYS))})")
            claim_source = source
            if isinstance(raw_value, dict):
                extra = set(raw_value) - {"value", "source"}
                if extra or "value" not in raw_value:
                    _fail(path, key, "a claim mapping has keys 'value' and optional 'source'"
                                     f" (got {sorted(map(str, raw_value))})")
                claim_source = raw_value.get("source", source)
                if not isinstance(claim_source, str) and claim_source is not None:
                    _fail(path, f"{key}.source", f"must be a string (got {claim_source!r})")
                value = _value(path, f"{key}.value", metric, raw_value["value"])
            else:
                value = _value(path, key, metric, raw_value)
            if not claim_source:
                _fail(path, f"{where}.source", "every claim needs its source (give 'source' "
                                               "for the defense, the claim or the file)")
            claims.append(Claim(str(name), str(claimed_as), str(metric), value,
                                str(claim_source)))
    description = raw.get("description") or ""
    return Reference(path, claims, str(description).strip(), table)


def _show(kind: str, value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return DASH
    if kind == "ms":
        return f"{float(value):.2f}"
    text = pct(value)
    if std is not None and not pd.isna(std):
        text += f" ± {100 * float(std):.1f}"
    return text


def _diff(kind: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return DASH
    if kind == "ms":
        return f"{value:+.2f} ms"
    return f"{100 * value:+.1f} pp"


def _known_false(value: Any) -> bool:
    return value is not None and not pd.isna(value) and not bool(value)


def reference_frame(claims: list[Claim], measured: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and matching measured defense (label first, then registered
    name); a claim with no match keeps one row with measured 'not run'."""
    rows = []
    for claim in claims:
        column, kind, _ = METRICS[claim.metric]
        match = measured[measured["defense"].astype(str) == claim.defense]
        if match.empty:
            match = measured[measured["defense_name"].astype(str) == claim.defense]
        base = {"reference_defense": claim.defense, "claimed_as": claim.claimed_as,
                "metric": claim.metric, "unit": "ms" if kind == "ms" else "fraction",
                "claimed": claim.value, "source": claim.source}
        if match.empty:
            rows.append({**base, "defense": None, "variant": "", "measured": None,
                         "measured_std": None, "difference": None, "status": "not run"})
            continue
        for _, row in match.iterrows():
            value = row.get(column)
            value = None if value is None or pd.isna(value) else float(value)
            std_col = _STD.get(claim.metric)
            std = row.get(std_col) if std_col else None
            std = None if std is None or pd.isna(std) else float(std)
            status = ""
            flags = row.get("flags")
            if claim.metric in DETECTION and _known_false(flags):
                status = NA
            elif int(row.get("cells", 0) or 0) == 0:
                status = "no finished cell"
            elif value is None:
                status = "not measured"
            rows.append({**base, "defense": str(row["defense"]), "variant": row["variant"],
                         "measured": value, "measured_std": std,
                         "difference": None if value is None else value - claim.value,
                         "status": status})
    return pd.DataFrame(rows, columns=["reference_defense", "claimed_as", "defense", "variant",
                                       "metric", "unit", "claimed", "measured",
                                       "measured_std", "difference", "status", "source"])


def reference_table(claims: list[Claim], description: str, measured: pd.DataFrame,
                    path: str | Path) -> ReportTable:
    tidy = reference_frame(claims, measured)
    display = pd.DataFrame({
        "claim": tidy["claimed_as"].astype(str),
        "defense": [row_label(d, v) if d else DASH
                    for d, v in zip(tidy["defense"], tidy["variant"])],
        "metric": [METRICS[m][2] + (" ms" if METRICS[m][1] == "ms" else " %")
                   for m in tidy["metric"]],
        "claimed": [_show(METRICS[m][1], v) for m, v in zip(tidy["metric"], tidy["claimed"])],
        "measured": [s if s else _show(METRICS[m][1], v, sd) for m, v, sd, s in
                     zip(tidy["metric"], tidy["measured"], tidy["measured_std"],
                         tidy["status"])],
        "difference": [_diff(METRICS[m][1], d) if not s else DASH for m, d, s in
                       zip(tidy["metric"], tidy["difference"], tidy["status"])],
        "source": tidy["source"],
    })
    caption = (f"Claims from {Path(path).name}"
               + (f" ({description})" if description else "")
               + " beside the measured values of the comparative analysis (same definitions:"
                 " detection micro-averaged over rounds, seeds, attacks and fractions; ± is "
                 "the std over seeds). Difference = measured − claimed, in percentage points "
                 "(pp) for rates. 'not run': no cell of that defense in these results.")
    tidy = tidy.copy()
    if not tidy["variant"].astype(str).str.len().any():
        tidy = tidy.drop(columns=["variant"])
    return ReportTable("reference", "Claimed versus measured", caption,
                       [Section("", display)], tidy)
