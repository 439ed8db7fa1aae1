"""The report's first table, "Which defense?": defenses ranked by worst-case accuracy.

One section per malicious fraction and setting (the values of any extra grid axis, e.g. a
partition), one row per defense, ranked against the defenses of the same setting: its worst-case
accuracy over every attack in the results with a bootstrap interval over seeds
(:func:`byzbench.worstcase.worst_case`, the same definition the regression gate uses), the
attack that achieves it, its clean accuracy, worst backdoor ASR, FPR, aggregation cost and
privacy facts (as in the comparative analysis), and whether any defense-aware attack was
among the attacks it faced. A rank is a range (:func:`byzbench.worstcase.rank_ranges`):
from 1 + the number of defenses whose interval lies entirely above this one's to the
number ranked − those entirely below, so defenses whose intervals overlap get overlapping
ranges and are never ordered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from byzbench.report.data import (
    CELL_KEYS,
    FRACTION,
    ROW_KEYS,
    ReportData,
    micro_detection,
    over_seeds,
    plain_keys,
)
from byzbench.report.privacy import FACTS, UNKNOWN
from byzbench.report.tables import (
    DASH,
    NA,
    ReportTable,
    Section,
    _drop_empty_variant,
    _missing,
    frac_text,
    ms,
    pct,
    pct_pm,
    row_label,
)
from byzbench.worstcase import LEVEL, SAMPLES, rank_ranges, worst_case

KEYS = [*ROW_KEYS, FRACTION]      # one row of the ranking: a defense at one fraction
SETTING = [FRACTION, "variant"]   # the defenses ranked against each other
NOT_AWARE_NOTE = "worst case over attacks that ignore the rule only"


def ranking_frame(data: ReportData, comparative: pd.DataFrame) -> pd.DataFrame:
    """The numbers of the ranking, one row per defense (and variant) and fraction with a
    finished cell, sorted by fraction, then rank, then worst-case accuracy (best first).

    ``comparative`` is :func:`~byzbench.report.tables.comparative_frame`'s output, whose
    aggregation cost and privacy facts the ranking repeats.
    """
    done = plain_keys(data.done)
    rows = done[KEYS].drop_duplicates().reset_index(drop=True)
    worst = worst_case(done, KEYS)
    out = rows.merge(worst, on=KEYS, how="left")

    clean = plain_keys(over_seeds(data.baseline, KEYS, "accuracy")).rename(columns={
        "accuracy_mean": "clean_accuracy", "accuracy_std": "clean_accuracy_std"})
    out = out.merge(clean.drop(columns=["n"]), on=KEYS, how="left")

    attacked = data.attacked
    asr = plain_keys(over_seeds(attacked.dropna(subset=["asr"]), CELL_KEYS, "asr"))
    if not asr.empty:
        top = asr.groupby(KEYS, dropna=False)["asr_mean"].max().rename("worst_asr")
        out = out.merge(top.reset_index(), on=KEYS, how="left")
    else:
        out["worst_asr"] = np.nan
    det = plain_keys(micro_detection(attacked, KEYS))
    if not det.empty:
        det = det[[*KEYS, "fpr", "flags"]].rename(columns={"flags": "decides_per_client"})
        out = out.merge(det, on=KEYS, how="left")
    else:
        out[["fpr", "decides_per_client"]] = np.nan

    shared = comparative[[*ROW_KEYS, "agg_ms", *FACTS]].rename(columns={
        "needs_plaintext_updates": "plaintext_updates", "needs_server_data": "server_data",
        "keeps_client_state": "client_state"})
    out = out.merge(plain_keys(shared), on=ROW_KEYS, how="left")

    out["rank"], out["rank_worst"] = 0, 0
    for _, part in out.groupby(SETTING, sort=False):
        best, worst = rank_ranges(part["ci_low"].to_numpy(dtype=float),
                                  part["ci_high"].to_numpy(dtype=float))
        out.loc[part.index, "rank"], out.loc[part.index, "rank_worst"] = best, worst
    ranked = out["rank"] > 0
    out["tied"] = ranked & (out["rank_worst"] > out["rank"])
    out["rank"] = out["rank"].where(ranked).astype("Int64")
    out["rank_worst"] = out["rank_worst"].where(ranked).astype("Int64")
    out["adaptive_tested"] = (out["adaptive_tested"].where(out["worst_accuracy"].notna())
                              .astype("boolean"))
    out["decides_per_client"] = out["decides_per_client"].astype("boolean")

    order = {c: {v: i for i, v in enumerate(data.cells[c].cat.categories)}
             for c in ("defense", "variant")}
    sort = pd.DataFrame({
        "f": out[FRACTION], "v": out["variant"].map(order["variant"]),
        "w": -out["worst_accuracy"].fillna(-np.inf),
        "d": out["defense"].map(order["defense"])})
    out = out.loc[sort.sort_values(["f", "v", "w", "d"]).index].reset_index(drop=True)
    columns = [*KEYS, "rank", "rank_worst", "tied", "worst_accuracy", "ci_low", "ci_high", "worst_attack",
               "attacks", "seeds", "adaptive_tested", "clean_accuracy", "clean_accuracy_std",
               "worst_asr", "fpr", "decides_per_client", "agg_ms", "plaintext_updates",
               "server_data", "client_state"]
    return out[columns]


def _rank_text(rank: Any, worst: Any) -> str:
    if _missing(rank):
        return DASH
    return f"{int(rank)}–{int(worst)}" if int(worst) > int(rank) else str(int(rank))


def _worst_text(row: pd.Series) -> str:
    if _missing(row["worst_accuracy"]):
        return DASH
    text = pct(row["worst_accuracy"])
    if not _missing(row["ci_low"]):
        text += f" [{pct(row['ci_low'])}, {pct(row['ci_high'])}]"
    return text


def _fpr_text(row: pd.Series) -> str:
    if _missing(row["decides_per_client"]):
        return DASH
    return pct(row["fpr"]) if bool(row["decides_per_client"]) else NA


def _adaptive_text(value: Any) -> str:
    return DASH if _missing(value) else ("yes" if bool(value) else "no")


def ranking_table(data: ReportData, comparative: pd.DataFrame) -> ReportTable:
    """The "Which defense?" table: :func:`ranking_frame` as one section per fraction and
    setting."""
    tidy = ranking_frame(data, comparative)
    with_asr = tidy["worst_asr"].notna().any()
    sections = []
    for (fraction, variant), part in tidy.groupby(SETTING, sort=False):
        display = pd.DataFrame({
            "rank": [_rank_text(r, w) for r, w in zip(part["rank"], part["rank_worst"])],
            "defense": [str(d) for d in part["defense"]],
            f"worst-case accuracy % [{LEVEL:.0%} CI]": [_worst_text(r)
                                                       for _, r in part.iterrows()],
            "worst attack": [DASH if _missing(a) else str(a) for a in part["worst_attack"]],
            "clean accuracy %": [pct_pm(m, s) for m, s in zip(part["clean_accuracy"],
                                                              part["clean_accuracy_std"])],
            "worst backdoor ASR %": [pct(v) for v in part["worst_asr"]],
            "FPR %": [_fpr_text(r) for _, r in part.iterrows()],
            "agg ms/round": [ms(v) for v in part["agg_ms"]],
            "plaintext updates": part["plaintext_updates"].fillna(UNKNOWN),
            "server data": part["server_data"].fillna(UNKNOWN),
            "client state": part["client_state"].fillna(UNKNOWN),
            "adaptive tested": [_adaptive_text(v) for v in part["adaptive_tested"]],
        })
        if not with_asr:
            display = display.drop(columns=["worst backdoor ASR %"])
        title = f"malicious fraction {frac_text(float(fraction))}"
        sections.append(Section(f"{title}, {variant}" if variant else title, display))
    if tidy["worst_accuracy"].isna().all():
        sections = []  # nothing attacked finished: the empty note says so

    caption = (
        "Defenses ranked by worst-case accuracy against the defenses of the same setting, "
        "one section per malicious fraction (and value of any extra grid axis): per "
        "attack, the final test accuracy averaged over seeds; the worst case is the lowest "
        "of those means over every attack in the results (the no-attack baseline left out), "
        f"and 'worst attack' is the attack that gives it ({DASH}: the defense ran only "
        f"without attack). [low, high]: {LEVEL:.0%} percentile bootstrap interval over "
        f"seeds ({SAMPLES:,} resamples; each resamples every attack's per-seed accuracies "
        "with replacement and takes the minimum over attacks of the means again; seeded, so "
        "the same results give the same interval; with one seed it is the point; widened "
        "to contain the point where the minimum's downward resampling bias would leave it "
        "out). Rows are sorted by worst case; rank: the places a defense can take given the "
        "intervals, from 1 + the number of defenses whose interval lies entirely above its "
        "own to the number ranked − those entirely below (e.g. 2–5): defenses whose "
        "intervals overlap get overlapping ranks and are never put in order. "
        "Clean accuracy: attack none, mean ± std over seeds; worst backdoor ASR: the highest "
        "mean ASR over the attacks; FPR: micro-averaged over the attacked cells "
        f"({NA}: flags nobody by design); agg ms/round and privacy facts as in the "
        "comparative analysis. Adaptive tested: whether a defense-aware attack (one that "
        "queries the defense) was among the attacks.")
    notes = []
    blind = tidy[tidy["adaptive_tested"].eq(False)]
    if not blind.empty:
        if not tidy["adaptive_tested"].eq(True).any():
            notes.append(f"adaptive tested: no — {NOT_AWARE_NOTE}: no attack in these "
                         "results is defense-aware.")
        else:
            names = ", ".join(dict.fromkeys(row_label(d, v) for d, v in
                                            zip(blind["defense"], blind["variant"])))
            notes.append(f"adaptive tested: no — {NOT_AWARE_NOTE} (no defense-aware attack "
                         f"ran against {names}).")
    if (tidy["seeds"] == 1).any():
        notes.append("one seed in some cells: their intervals are points, so their ranks "
                     "order point estimates without any measure of uncertainty.")
    finished = set(map(tuple, plain_keys(data.done)[KEYS].itertuples(index=False)))
    not_done = plain_keys(data.not_done)[KEYS].drop_duplicates()
    missing = [row for row in not_done.itertuples(index=False) if tuple(row) not in finished]
    if missing:
        notes.append("no finished cell (all skipped or failed), not ranked: " + ", ".join(
            f"{row_label(d, v)} @ {frac_text(float(f))}" for d, v, f in missing))
    return ReportTable("ranking", "Which defense?", caption, sections,
                       _drop_empty_variant(tidy), empty_note="no attacked cell finished",
                       notes=notes)


__all__ = ["NOT_AWARE_NOTE", "ranking_frame", "ranking_table"]
