"""The report's tables: each as display sections (strings) and one tidy numeric frame (CSV).

1. comparative analysis — one row per defense: detection rate, FPR, precision, accuracy
   under attack (mean and worst), accuracy drop versus no attack, backdoor ASR, aggregation
   cost, privacy facts;
2. accuracy — attack × defense, one section per malicious fraction;
3. detection — detection rate / FPR, attack × defense (fractions pooled);
4. backdoor ASR — defense × malicious fraction; backdoor durability — the ASR at the end of
   the attack window and 10 / 20 rounds later, rounds until it falls below 20%;
5. skipped and failed cells with their reasons;
6. privacy, measured (only for results with privacy cells) — per defense and privacy
   setting: runs under secure aggregation or skipped (why), ε at δ, accuracy and detection
   under attack, secure aggregation time per round.

Rates are shown in percent with one decimal, "mean ± std" over seeds; "n/a" where the
defense flags nobody by design, "–" where a value is undefined or was not measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from byzbench.metrics import DURABILITY_KEYS, durability, last_active_round
from byzbench.report.data import (
    CELL_KEYS,
    FRACTION,
    ROW_KEYS,
    ReportData,
    micro_detection,
    over_seeds,
    plain_keys,
)
from byzbench.report.privacy import (
    FACTS,
    fact_text,
    has_privacy,
    measured_privacy_frame,
    spec_privacy_facts,
)

_plain = plain_keys

NA = "n/a"      # the defense makes no per-client decision
DASH = "–"      # undefined (e.g. no malicious client) or not measured


@dataclass
class Section:
    """One displayed block of a table: a subtitle and a frame of strings."""

    title: str
    frame: pd.DataFrame


@dataclass
class ReportTable:
    """A table of the report: what the terminal, markdown and HTML show, and the CSV."""

    key: str                     # file stem of the CSV, anchor in the documents
    title: str
    caption: str
    sections: list[Section]
    tidy: pd.DataFrame
    empty_note: str = ""         # shown instead of the sections when there are none
    notes: list[str] = field(default_factory=list)


# -- formatting -----------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any, digits: int = 1) -> str:
    return DASH if _missing(value) else f"{100 * float(value):.{digits}f}"


def pct_pm(mean: Any, std: Any, n: Any = None, n_max: Any = None) -> str:
    """'91.2 ± 1.3' (percent); the std is left out for one seed; '(n=1)' where a cell has
    fewer seeds than the table's others."""
    if _missing(mean):
        return DASH
    text = pct(mean)
    if not _missing(std):
        text += f" ± {100 * float(std):.1f}"
    if n is not None and n_max is not None and not _missing(n) and int(n) < int(n_max):
        text += f" (n={int(n)})"
    return text


def ms(value: Any) -> str:
    if _missing(value):
        return DASH
    value = float(value)
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def frac_text(value: float) -> str:
    return f"{100 * value:g}%"


def row_label(defense: Any, variant: Any) -> str:
    return f"{defense} [{variant}]" if variant else str(defense)


def seeds_note(n: pd.Series) -> str:
    values = sorted({int(v) for v in n.dropna()})
    if not values:
        return ""
    if len(values) == 1:
        return f"n = {values[0]} seed{'s' if values[0] != 1 else ''} per value"
    return (f"n = {values[0]}–{values[-1]} seeds per value (values from fewer than "
            f"{values[-1]} seeds are marked with their n)")


def _detection_text(row: pd.Series, key: str, with_std: bool = True) -> str:
    if not bool(row["flags"]):
        return NA
    std = row.get(f"{key}_std") if with_std else None
    return pct_pm(row[key], std)


def _labels(frame: pd.DataFrame) -> list[str]:
    """Defense (+ variant) display labels of a tidy frame's rows."""
    return [row_label(d, v) for d, v in zip(frame["defense"], frame["variant"])]


def _pivot(tidy: pd.DataFrame, row: str, column: str, text: Callable[[pd.Series], str],
           index_title: str, row_order: list[Any], column_order: list[Any]) -> pd.DataFrame:
    """A display frame: one row per value of ``row``, one column per value of ``column``
    (both in the given orders, keeping those present), entries ``text(tidy_row)``;
    missing entries '–'."""
    if tidy.empty:
        return pd.DataFrame(columns=[index_title])
    shown = tidy.assign(_text=[text(r) for _, r in tidy.iterrows()])
    wide = shown.pivot_table(index=row, columns=column, values="_text", aggfunc="first",
                             observed=True, sort=False)
    rows = [r for r in row_order if r in wide.index]
    columns = [c for c in column_order if c in wide.columns]
    wide = wide.reindex(index=rows, columns=columns).fillna(DASH)
    wide.index = [str(v) for v in wide.index]
    wide.index.name = index_title
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index()


def _with_status(tidy: pd.DataFrame, not_done: pd.DataFrame) -> pd.DataFrame:
    """``tidy`` plus one row per grid cell (seeds pooled) that has no finished seed, whose
    ``_status`` ('skipped' / 'failed') is shown in place of a number."""
    not_done = not_done.drop_duplicates(CELL_KEYS)
    if not tidy.empty and not not_done.empty:
        finished = pd.MultiIndex.from_frame(tidy[CELL_KEYS])
        not_done = not_done[~pd.MultiIndex.from_frame(not_done[CELL_KEYS]).isin(finished)]
    parts = [tidy.assign(_status="")]
    if not not_done.empty:
        parts.append(not_done[CELL_KEYS].assign(_status=not_done["status"].astype(str)))
    return pd.concat(parts, ignore_index=True)


def _orders(data: ReportData) -> tuple[list[str], list[str]]:
    """Attack labels and defense (+ variant) labels in grid order."""
    attacks = [str(a) for a in data.cells["attack"].cat.categories]
    pairs = data.cells[["defense", "variant"]].drop_duplicates()
    ranks = {c: {v: i for i, v in enumerate(data.cells[c].cat.categories)}
             for c in ("defense", "variant")}
    pairs = pairs.assign(_d=pairs["defense"].map(ranks["defense"]).astype(int),
                         _v=pairs["variant"].map(ranks["variant"]).astype(int))
    pairs = pairs.sort_values(["_d", "_v"])
    return attacks, _labels(pairs)


# -- 1. comparative analysis ----------------------------------------------------------------

def _privacy_frame(cells: pd.DataFrame) -> pd.DataFrame:
    first = cells.drop_duplicates(ROW_KEYS)
    rows = []
    for (defense, variant), config in zip(first[ROW_KEYS].itertuples(index=False),
                                          first["config"]):
        facts = spec_privacy_facts(config.get("defense"))
        rows.append({"defense": defense, "variant": variant,
                     **{key: fact_text(v) for key, v in facts.items()}})
    return pd.DataFrame(rows, columns=[*ROW_KEYS, *FACTS])


def _accuracy_drop(data: ReportData) -> pd.DataFrame:
    """Per attacked cell: accuracy without attack − accuracy with attack, same defense,
    variant and seed (same malicious fraction where the baseline ran at it, else the
    baseline's mean over its fractions)."""
    attacked = data.attacked
    base = data.baseline.dropna(subset=["accuracy"])
    if attacked.empty or base.empty:
        return attacked.assign(accuracy_drop=np.nan)
    same = (base.groupby([*ROW_KEYS, FRACTION, "seed"], observed=True)["accuracy"].mean()
            .rename("_base_same").reset_index())
    any_ = (base.groupby([*ROW_KEYS, "seed"], observed=True)["accuracy"].mean()
            .rename("_base_any").reset_index())
    keys_same = [*ROW_KEYS, FRACTION, "seed"]
    merged = _plain(attacked).merge(_plain(same), how="left", on=keys_same)
    merged = merged.merge(_plain(any_), how="left", on=[*ROW_KEYS, "seed"])
    baseline = merged["_base_same"].fillna(merged["_base_any"])
    out = attacked.copy()
    out["accuracy_drop"] = (baseline - merged["accuracy"]).to_numpy()
    return out


def comparative_frame(data: ReportData) -> pd.DataFrame:
    """The numbers of the comparative analysis, one row per defense (and variant)."""
    cells = _plain(data.cells)
    rows = cells[ROW_KEYS].drop_duplicates().reset_index(drop=True)
    names = cells.drop_duplicates(ROW_KEYS)[[*ROW_KEYS, "defense_name"]]
    attacked = data.attacked
    out = rows.merge(names, on=ROW_KEYS, how="left")

    det = _plain(micro_detection(attacked, ROW_KEYS))
    out = out.merge(det.drop(columns=["n"], errors="ignore"), on=ROW_KEYS, how="left")

    acc = _plain(over_seeds(attacked, ROW_KEYS, "accuracy"))
    out = out.merge(acc, on=ROW_KEYS, how="left")

    per_cell = _plain(over_seeds(attacked, [*ROW_KEYS, "attack", FRACTION], "accuracy"))
    per_cell = per_cell.dropna(subset=["accuracy_mean"])
    if not per_cell.empty:
        worst_idx = per_cell.groupby(ROW_KEYS, dropna=False)["accuracy_mean"].idxmin()
        worst = per_cell.loc[worst_idx.dropna().astype(int)].rename(columns={
            "accuracy_mean": "worst_accuracy_mean", "accuracy_std": "worst_accuracy_std",
            "attack": "worst_attack", FRACTION: "worst_fraction", "n": "worst_n"})
        out = out.merge(worst.drop(columns=["worst_n"]), on=ROW_KEYS, how="left")
    else:
        out[["worst_accuracy_mean", "worst_accuracy_std", "worst_attack",
             "worst_fraction"]] = np.nan

    drops = _plain(over_seeds(_accuracy_drop(data), ROW_KEYS, "accuracy_drop"))
    out = out.merge(drops.drop(columns=["n"]), on=ROW_KEYS, how="left")

    backdoor = attacked.dropna(subset=["asr"])
    asr = _plain(over_seeds(backdoor, ROW_KEYS, "asr")).drop(columns=["n"])
    out = out.merge(asr, on=ROW_KEYS, how="left")

    done = _plain(data.done)
    cost = done.groupby(ROW_KEYS, dropna=False).agg(
        agg_ms=("agg_ms", "median"), verify_ms=("verify_ms", "median"),
        clients_per_round=("n", "median"), d=("d", "median"),
        cells=("cell_id", "count")).reset_index()
    out = out.merge(cost, on=ROW_KEYS, how="left")
    out = out.merge(_privacy_frame(cells), on=ROW_KEYS, how="left")
    out["cells"] = out["cells"].fillna(0).astype(int)
    out["n"] = out["n"].astype("Int64")
    order = list(data.cells["defense"].cat.categories)
    out["_order"] = out["defense"].map({d: i for i, d in enumerate(order)})
    return out.sort_values(["_order", "variant"]).drop(columns=["_order"]).reset_index(
        drop=True)


def span_text(values: pd.Series) -> str:
    """'4,810' for one distinct value, '1,210–4,810' for several, '?' for none."""
    present = sorted({int(v) for v in values.dropna()})
    if not present:
        return "?"
    if len(present) == 1:
        return f"{present[0]:,}"
    return f"{present[0]:,}–{present[-1]:,}"


def _cost_caption(frame: pd.DataFrame, done: pd.DataFrame) -> str:
    def values(column: str) -> str:
        return span_text(done[column])

    devices = sorted({str(c.get("device", "?")) for c in done["config"]}) or ["?"]
    return (f"Aggregation cost: median wall time of the defense per round in ms (median over "
            f"rounds, then over the defense's cells), with n = {values('n')} clients per "
            f"round and d = {values('d')} model parameters, device {', '.join(devices)}; "
            f"for defenses that verify signatures it includes verification.")


def comparative_table(data: ReportData, frame: pd.DataFrame | None = None) -> ReportTable:
    frame = comparative_frame(data) if frame is None else frame
    attacked = data.attacked
    attacks = ", ".join(map(str, attacked["attack"].unique())) or "no attacked cell finished"
    fractions = ", ".join(frac_text(f) for f in sorted(attacked[FRACTION].unique())) or DASH
    n_max = frame["n"].max() if frame["n"].notna().any() else None

    def worst_case(row: pd.Series) -> str:
        if _missing(row.get("worst_fraction")):
            return DASH
        return f"{row['worst_attack']} @ {frac_text(float(row['worst_fraction']))}"

    def detection(row: pd.Series, key: str) -> str:
        if _missing(row.get("flags")) or row.get("cells", 0) == 0:
            return DASH
        return _detection_text(row, key)

    display = pd.DataFrame({
        "defense": [row_label(d, v) for d, v in zip(frame["defense"], frame["variant"])],
        "detection rate %": [detection(r, "detection_rate") for _, r in frame.iterrows()],
        "FPR %": [detection(r, "fpr") for _, r in frame.iterrows()],
        "precision %": [detection(r, "precision") for _, r in frame.iterrows()],
        "accuracy under attack %": [pct_pm(r["accuracy_mean"], r["accuracy_std"], r["n"],
                                           n_max) for _, r in frame.iterrows()],
        "worst accuracy %": [pct_pm(m, s) for m, s in zip(frame["worst_accuracy_mean"],
                                                          frame["worst_accuracy_std"])],
        "worst case": [worst_case(r) for _, r in frame.iterrows()],
        "accuracy drop pp": [pct_pm(m, s) for m, s in zip(frame["accuracy_drop_mean"],
                                                          frame["accuracy_drop_std"])],
        "backdoor ASR %": [pct_pm(m, s) for m, s in zip(frame["asr_mean"], frame["asr_std"])],
        "agg ms/round": [ms(v) for v in frame["agg_ms"]],
        "plaintext updates": frame["needs_plaintext_updates"].fillna("unknown"),
        "server data": frame["needs_server_data"].fillna("unknown"),
        "client state": frame["keeps_client_state"].fillna("unknown"),
        "seeds": [DASH if _missing(n) else str(int(n)) for n in frame["n"]],
    })
    done = data.done
    seeds = sorted({int(n) for n in frame["n"].dropna()})
    if len(seeds) <= 1:  # the same number of seeds everywhere: say it once
        display = display.drop(columns=["seeds"])
    caption = (
        f"One row per defense, measured under attack (attacks: {attacks}; malicious "
        f"fractions: {fractions}"
        + (f"; {seeds[0]} seed{'s' if seeds[0] != 1 else ''} per cell" if len(seeds) == 1
           else "")
        + "). Detection rate (recall), FPR and precision are "
        f"micro-averaged: TP/FP/FN/TN summed over rounds, seeds, attacks and fractions, then "
        f"divided; ± is the std over seeds of the per-seed rate; {NA} where the defense flags "
        f"nobody by design. Accuracy under attack: final test accuracy, mean over attacks "
        f"and fractions per seed, then mean ± std over seeds; worst accuracy: the "
        f"attack and fraction with the lowest mean; accuracy drop: accuracy without attack "
        f"minus accuracy with attack, same defense and seed, in percentage points; backdoor "
        f"ASR: final attack-success rate over the cells where a backdoor ran. "
        f"{_cost_caption(frame, done)} Privacy facts are stated by each defense, not "
        f"measured: needs each client's plaintext update (no secure aggregation) / needs "
        f"server-held clean data / keeps per-client state across rounds.")
    notes = []
    empty_rows = frame.loc[frame["cells"] == 0, ["defense", "variant"]]
    if not empty_rows.empty:
        notes.append("no finished cell (all skipped or failed): " + ", ".join(
            row_label(d, v) for d, v in empty_rows.itertuples(index=False)))
    tidy = frame.rename(columns={"needs_plaintext_updates": "plaintext_updates",
                                 "needs_server_data": "server_data",
                                 "keeps_client_state": "client_state"})
    tidy = tidy.drop(columns=["flags"], errors="ignore")
    tidy.insert(tidy.columns.get_loc("tp"), "decides_per_client", _decides(frame["flags"]))
    return ReportTable("comparative", "Comparative analysis", caption,
                       [Section("", display)], _drop_empty_variant(tidy), notes=notes)


# -- 2. accuracy ----------------------------------------------------------------------------

def accuracy_frame(data: ReportData) -> pd.DataFrame:
    done = data.done
    stats = over_seeds(done, CELL_KEYS, "accuracy")
    diverged = (done.assign(_div=done["diverged"].fillna(False).astype(bool))
                .groupby(CELL_KEYS, observed=True, dropna=False)["_div"].sum()
                .rename("diverged").reset_index())
    out = _plain(stats).merge(_plain(diverged), on=CELL_KEYS, how="left")
    return _sorted(out, data)


def _sorted(frame: pd.DataFrame, data: ReportData) -> pd.DataFrame:
    """Rows in grid order: defense, variant, attack, fraction."""
    if frame.empty:
        return frame
    orders = {c: {v: i for i, v in enumerate(data.cells[c].cat.categories)}
              for c in ("defense", "attack", "variant")}
    keys = [c for c in ("defense", "variant", "attack", FRACTION) if c in frame]
    ranks = {c: frame[c].map(orders[c]) if c in orders else frame[c] for c in keys}
    order = pd.DataFrame(ranks).sort_values(keys).index
    return frame.loc[order].reset_index(drop=True)


def accuracy_table(data: ReportData) -> ReportTable:
    tidy = accuracy_frame(data)
    n_max = tidy["n"].max() if not tidy.empty else None
    attacks, defenses = _orders(data)
    shown = _with_status(tidy, _plain(data.not_done))

    def text(row: pd.Series) -> str:
        if row["_status"]:
            return str(row["_status"])
        value = pct_pm(row["accuracy_mean"], row["accuracy_std"], row["n"], n_max)
        return value + (" †" if row.get("diverged", 0) else "")

    sections = []
    if not shown.empty:
        shown = shown.assign(_col=_labels(shown), _row=shown["attack"].astype(str))
        for fraction, part in shown.groupby(FRACTION, sort=True):
            sections.append(Section(f"malicious fraction {frac_text(float(fraction))}",
                                    _pivot(part, "_row", "_col", text, "attack", attacks,
                                           defenses)))
    caption = ("Final clean test accuracy in %, attack × defense, mean ± std over seeds; "
               f"{seeds_note(tidy['n'])}. † marks cells where at least one seed diverged "
               "(non-finite model); 'skipped' / 'failed': no seed of the cell finished (see "
               "the table of skipped and failed cells).")
    return ReportTable("accuracy", "Accuracy under attack", caption, sections,
                       _drop_empty_variant(tidy), empty_note="no finished cell")


# -- 3. detection ---------------------------------------------------------------------------

def detection_frame(data: ReportData) -> pd.DataFrame:
    return _sorted(_plain(micro_detection(data.done, CELL_KEYS)), data)


def detection_table(data: ReportData) -> ReportTable:
    tidy = detection_frame(data)
    pooled = _plain(micro_detection(data.done, ["defense", "variant", "attack"]))
    pooled = _sorted(pooled, data)

    def text(row: pd.Series) -> str:
        if not bool(row["flags"]):
            return NA
        return f"{pct(row['detection_rate'])} / {pct(row['fpr'])}"

    attacks, defenses = _orders(data)
    sections = []
    if not pooled.empty:
        pooled = pooled.assign(_col=_labels(pooled), _row=pooled["attack"].astype(str))
        sections.append(Section("", _pivot(pooled, "_row", "_col", text, "attack", attacks,
                                           defenses)))
    fractions = ", ".join(frac_text(f) for f in sorted(data.done[FRACTION].unique()))
    caption = ("Detection rate % / false-positive rate %, attack × defense, micro-averaged: "
               "TP/FP/FN/TN summed over rounds, seeds and malicious fractions "
               f"({fractions}), then divided. {NA}: the defense flags nobody by design; "
               f"{DASH}: undefined (no malicious client in the rounds, e.g. attack none, or "
               "nothing flagged for precision). The CSV has one row per defense, attack and "
               "fraction with the summed counts, the rates and their std over seeds.")
    return ReportTable("detection", "Detection rate and false-positive rate", caption,
                       sections, _drop_empty_variant(tidy.drop(columns=["flags"]).assign(
                           decides_per_client=_decides(tidy["flags"]))),
                       empty_note="no finished cell")


# -- 4. backdoor ASR ------------------------------------------------------------------------

def backdoor_frame(data: ReportData) -> pd.DataFrame:
    cells = data.attacked.dropna(subset=["asr"])
    return _sorted(_plain(over_seeds(cells, CELL_KEYS, "asr")), data)


def backdoor_table(data: ReportData) -> ReportTable:
    tidy = backdoor_frame(data)
    n_max = tidy["n"].max() if not tidy.empty else None
    sections = []
    _, defenses = _orders(data)
    fractions = [frac_text(f) for f in sorted(data.cells[FRACTION].unique())]
    not_done = _plain(data.not_done)
    not_done = not_done[not_done["attack"].isin(set(tidy["attack"]))]
    shown = _with_status(tidy, not_done)

    def text(row: pd.Series) -> str:
        if row["_status"]:
            return str(row["_status"])
        return pct_pm(row["asr_mean"], row["asr_std"], row["n"], n_max)

    for attack, part in shown.groupby("attack", sort=False):
        part = part.assign(_row=_labels(part), _col=[frac_text(f) for f in part[FRACTION]])
        display = _pivot(part, "_row", "_col", text, "defense", defenses, fractions)
        title = f"attack {attack}" if tidy["attack"].nunique() > 1 else ""
        sections.append(Section(title, display))
    caption = ("Backdoor attack-success rate in % (triggered test samples whose true label is "
               "not the target, classified as the target), defense × malicious fraction, "
               f"final round, mean ± std over seeds; {seeds_note(tidy['n'])}.")
    return ReportTable("backdoor_asr", "Backdoor attack-success rate", caption, sections,
                       _drop_empty_variant(tidy), empty_note="no backdoor attack ran")


# -- 4b. backdoor durability ---------------------------------------------------------------

DURABILITY_RATES = ("asr_end", "asr_after_10", "asr_after_20")


def _cell_last_active(cell: pd.Series) -> int | None:
    """The attack's last active round: stored by the engine, or (databases written before
    it was) from the cell's resolved config by the same definition."""
    stored = cell.get("last_active_round")
    if not _missing(stored):
        return int(stored)
    config = cell["config"]
    params = config["attack"]["params"]
    return last_active_round(int(params.get("start_round", 0)), int(params.get("every", 1)),
                             params.get("end_round"), int(config["rounds"]))


def durability_cells(data: ReportData) -> pd.DataFrame:
    """One row per done backdoor cell: CELL_KEYS, seed and
    :func:`byzbench.metrics.durability` of its round rows."""
    cells = _plain(data.attacked.dropna(subset=["asr"]))
    columns = [*CELL_KEYS, "seed", *DURABILITY_KEYS]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    by_cell = {cid: part for cid, part in data.rounds.groupby("cell_id", sort=False)}
    rows = []
    for _, cell in cells.iterrows():
        part = by_cell.get(cell["cell_id"])
        records = [] if part is None else [
            {"round": r, "asr": None if _missing(a) else float(a)}
            for r, a in zip(part["round"], part["asr"])]
        values = durability(records, _cell_last_active(cell))
        rows.append({**{k: cell[k] for k in (*CELL_KEYS, "seed")}, **values})
    return pd.DataFrame(rows, columns=columns)


def durability_frame(data: ReportData) -> pd.DataFrame:
    """Per defense, attack and fraction: the ASR at the end of the attack, 10 and 20 rounds
    later (mean ± std over seeds, ``n`` seeds with a value), and the rounds until the ASR
    fell below 20% — ``recovery_mean`` over the seeds where it did, ``recovered`` of
    ``seeds``, and ``horizon_min`` (the shortest watch after the attack, in rounds)."""
    cells = durability_cells(data)
    out_columns = [*CELL_KEYS, "last_active_round",
                   *(f"{k}_{s}" for k in DURABILITY_RATES for s in ("mean", "std", "n")),
                   "recovery_mean", "recovery_std", "recovered", "seeds", "horizon_min"]
    if cells.empty:
        return pd.DataFrame(columns=out_columns)
    for column in (*DURABILITY_RATES, "asr_recovery_rounds", "asr_horizon",
                   "last_active_round"):
        cells[column] = pd.to_numeric(cells[column]).astype(float)
    grouped = cells.groupby(CELL_KEYS, dropna=False, sort=False)
    out = grouped.agg(last_active_round=("last_active_round", "max"),
                      recovery_mean=("asr_recovery_rounds", "mean"),
                      recovery_std=("asr_recovery_rounds", "std"),
                      recovered=("asr_recovery_rounds", "count"),
                      seeds=("seed", "nunique"),
                      horizon_min=("asr_horizon", "min")).reset_index()
    for key in DURABILITY_RATES:
        stats = over_seeds(cells, CELL_KEYS, key).rename(columns={"n": f"{key}_n"})
        out = out.merge(stats, on=CELL_KEYS, how="left")
    out = out.assign(**{f"{k}_n": out[f"{k}_n"].fillna(0).astype(int)
                        for k in DURABILITY_RATES})
    return _sorted(out[out_columns], data)


def recovery_text(row: pd.Series) -> str:
    """'12 ± 3' rounds when every seed's ASR fell below 20%; '> H' when none did within
    the H rounds watched after the attack; 'x (k of n)' when only k of n seeds did."""
    seeds, recovered = int(row["seeds"]), int(row["recovered"])
    if recovered == 0:
        return DASH if _missing(row["horizon_min"]) else f"> {int(row['horizon_min'])}"
    text = f"{float(row['recovery_mean']):.0f}"
    if not _missing(row["recovery_std"]):
        text += f" ± {float(row['recovery_std']):.0f}"
    if recovered < seeds:
        text += f" ({recovered} of {seeds})"
    return text


def durability_table(data: ReportData) -> ReportTable:
    tidy = durability_frame(data)
    sections = []
    _, defenses = _orders(data)
    order = {label: i for i, label in enumerate(defenses)}
    for attack, part in tidy.groupby("attack", sort=False):
        part = part.assign(_label=_labels(part))
        part = part.assign(_o=part["_label"].map(order)).sort_values(["_o", FRACTION])
        display = pd.DataFrame({
            "defense": part["_label"].tolist(),
            "fraction": [frac_text(float(f)) for f in part[FRACTION]],
            "last attack round": [DASH if _missing(v) else str(int(v))
                                  for v in part["last_active_round"]],
            **{title: [pct_pm(m, sd) for m, sd in zip(part[f"{k}_mean"], part[f"{k}_std"])]
               for title, k in (("ASR at end %", "asr_end"),
                                ("ASR +10 rounds %", "asr_after_10"),
                                ("ASR +20 rounds %", "asr_after_20"))},
            "rounds until ASR < 20%": [recovery_text(r) for _, r in part.iterrows()],
        })
        title = f"attack {attack}" if tidy["attack"].nunique() > 1 else ""
        sections.append(Section(title, display))
    caption = (
        "How long a backdoor survives its attacker (byzbench.metrics.durability): the ASR in "
        "% at the first evaluation at or after the attack's last active round L (ASR at "
        "end), and at the first evaluation at or after L + 10 and L + 20 (mean ± std over "
        f"seeds; {DASH}: the run ends earlier); rounds until ASR < 20%: from L to the first "
        "evaluation at or after L with an ASR below 20%, mean ± std over the seeds where it "
        "fell ('> H': it did not within the H rounds the run watched after L; '(k of n)': "
        "only k of n seeds fell). Evaluations every eval_every rounds bound the precision.")
    return ReportTable("backdoor_durability", "Backdoor durability", caption, sections,
                       _drop_empty_variant(tidy), empty_note="no backdoor attack ran")


# -- 5. skipped and failed ------------------------------------------------------------------

def skipped_frame(data: ReportData) -> pd.DataFrame:
    """Skipped and failed cells, one row per defense, fraction and reason, with the attacks
    and seeds it covers (a skip reason rarely depends on the attack or the seed)."""
    cells = _plain(data.not_done)
    columns = ["status", "defense", "variant", FRACTION, "attacks", "seeds", "cells", "reason"]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    cells = cells.assign(reason=cells["error"].fillna("(no reason recorded)").astype(str))
    grouped = cells.groupby(["status", "defense", "variant", FRACTION, "reason"],
                            sort=False, dropna=False)
    out = grouped.agg(
        attacks=("attack", lambda s: ", ".join(dict.fromkeys(s.astype(str)))),
        seeds=("seed", lambda s: ", ".join(str(v) for v in sorted(set(s.astype(int))))),
        cells=("cell_id", "count")).reset_index()
    out = _sorted(out[columns], data)
    return out.sort_values("status", kind="stable", ascending=False).reset_index(drop=True)


def skipped_table(data: ReportData) -> ReportTable:
    tidy = skipped_frame(data)
    display = pd.DataFrame({
        "status": tidy["status"],
        "defense": _labels(tidy) if len(tidy) else [],
        "fraction": [frac_text(float(f)) for f in tidy[FRACTION]],
        "attacks": tidy["attacks"],
        "seeds": tidy["seeds"],
        "cells": tidy["cells"].astype(str),
        "reason": [_first_line(r) for r in tidy["reason"]],
    })
    counts = data.cells["status"].value_counts()
    caption = (f"Cells that produced no result: {int(counts.get('skipped', 0))} skipped (the "
               f"defense cannot run with that many clients per round and assumed malicious), "
               f"{int(counts.get('failed', 0))} failed (an error; 'byzbench run' retries "
               f"them). Cells with the same defense, fraction and reason are listed once, "
               f"with their attacks and seeds.")
    return ReportTable("skipped_failed", "Skipped and failed cells", caption,
                       [Section("", display)] if len(display) else [],
                       _drop_empty_variant(tidy), empty_note="none: every cell finished")


def _first_line(text: str, limit: int = 300) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _decides(flags: pd.Series) -> pd.Series:
    """CSV column: True where the defense made per-client decisions (detection defined),
    False where it flags nobody by design (detection "n/a"), empty where nothing ran."""
    return flags.map(lambda f: pd.NA if f is None or pd.isna(f) else bool(f)).astype("boolean")


def _drop_empty_variant(frame: pd.DataFrame) -> pd.DataFrame:
    if "variant" in frame and not frame["variant"].astype(str).str.len().any():
        return frame.drop(columns=["variant"])
    return frame


# -- 6. privacy, measured -------------------------------------------------------------------

def _epsilon_text(value: Any) -> str:
    if _missing(value):
        return DASH
    return "∞" if math.isinf(float(value)) else f"{float(value):.2f}"


def privacy_table(data: ReportData) -> ReportTable | None:
    """The measured privacy of each defense, or None when no cell has a privacy block (the
    reports of results without privacy do not change)."""
    if not has_privacy(data.cells):
        return None
    tidy = measured_privacy_frame(data)
    tidy = tidy.assign(_row=[row_label(d, v) for d, v in zip(tidy["defense"], tidy["variant"])])
    rows = list(dict.fromkeys(tidy["_row"]))
    settings = list(dict.fromkeys(tidy["privacy"]))

    def status(row: pd.Series) -> str | None:
        if row["cells_done"]:
            return None
        return "skipped" if row["cells_skipped"] else "failed"

    def accuracy(row: pd.Series) -> str:
        if status(row):
            return str(status(row))
        worst = pct(row["worst_accuracy"])
        return f"{pct(row['clean_accuracy'])} / {pct(row['attacked_accuracy'])} ({worst})"

    def detection(row: pd.Series) -> str:
        if status(row):
            return str(status(row))
        if row["flags"] is None or pd.isna(row["flags"]):
            return DASH
        return pct(row["detection_rate"]) if bool(row["flags"]) else NA

    secure = tidy[tidy["secure_aggregation"] != "none"]

    def runs(row: pd.Series) -> str:
        if row["cells_done"]:
            return f"runs, {ms(row['secagg_ms'])} ms/round" + (
                f" ({row['cells_skipped']} cells skipped)" if row["cells_skipped"] else "")
        if row["cells_skipped"]:
            reason = _first_line(row["skip_reason"], 160)
            return f"skipped: {reason}" if reason else "skipped"
        return "failed"

    sections = [
        Section("accuracy, %: no attack / mean over the attacks (worst attack)",
                _pivot(tidy, "_row", "privacy", accuracy, "defense", rows, settings)),
        Section("detection rate under attack, % (micro-average over attacks, rounds, seeds)",
                _pivot(tidy, "_row", "privacy", detection, "defense", rows, settings)),
    ]
    if not secure.empty:
        secure = secure.assign(_protocol=[s for s in secure["privacy"]])
        sections.append(Section(
            "secure aggregation: does the defense run, and its time per round",
            _pivot(secure, "_row", "_protocol", runs, "defense", rows,
                   list(dict.fromkeys(secure["_protocol"])))))
    dp = tidy[tidy["dp_mode"] != "none"]
    if not dp.empty:
        spent = (dp.groupby("privacy", sort=False)
                 .agg(mode=("dp_mode", "first"), sigma=("sigma", "mean"),
                      epsilon=("epsilon", "mean"), delta=("delta", "mean"))
                 .reset_index())
        sections.append(Section("differential privacy: the ε each setting spent", pd.DataFrame({
            "setting": spent["privacy"],
            "mode": spent["mode"],
            "σ (noise multiplier)": [DASH if _missing(v) else f"{v:.3f}"
                                     for v in spent["sigma"]],
            "ε spent (run)": [_epsilon_text(v) for v in spent["epsilon"]],
            "δ": [DASH if _missing(v) else f"{v:g}" for v in spent["delta"]]})))
    caption = (
        "Measured privacy, per defense and privacy setting ('none': plaintext updates, ε = "
        "∞). Accuracy: final clean test accuracy without attack / under attack, the mean over "
        "the attacks of each attack's mean over seeds (the worst attack in brackets); "
        f"detection: as in the detection table ({NA}: the defense flags nobody). Secure "
        "aggregation: whether the defense's cells ran (the server saw only masked updates "
        "and their sum) and the median protocol time per round, or why they were skipped. DP "
        "(DP-FedAvg): ε at δ of the whole run from the RDP accountant of dp-accounting; "
        "central ε is per client's data (add/remove one client) and exact for the clipped "
        "mean, not a guarantee for selection rules (README, Differential privacy); local ε "
        "is per client's release (replace-one, sensitivity 2C), composed over every round.")
    return ReportTable("privacy", "Privacy, measured", caption, sections,
                       _drop_empty_variant(tidy.drop(columns=["_row"])),
                       empty_note="no privacy cell")
