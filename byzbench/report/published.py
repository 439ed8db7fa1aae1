"""A paper's published table beside the measured one, and the orderings of defenses compared.

A reference file (``--reference FILE``, see :mod:`byzbench.report.reference`) may hold,
besides per-defense claims, the cells of a published table under ``table:``::

    source: "Cao et al., FLTrust, NDSS 2021"      # optional default source
    table:
      - table: "Table II"              # the paper's table
        column: "Krum attack"          # the paper's column (default: the attack)
        attack: krum_attack            # byzbench attack: a label or registered name
        defense: krum                  # byzbench defense: a label or registered name
        claimed_as: Krum               # optional: the paper's name of the defense
        metric: error_rate             # error_rate, accuracy or asr
        value: 0.90                    # a fraction or "90%"
        source: "Table II, row Krum"   # where the number comes from (required)
        malicious_fraction: 0.2        # optional: only cells at this fraction

For every entry the measured value is the final test accuracy (or backdoor ASR) of the
matching cells, averaged over seeds (and pooled over fractions and extra axes unless
``malicious_fraction`` is given); ``error_rate`` is 1 − accuracy.

**Orderings.** Per (table, column, metric) — one attack — every pair of defenses with both
a published and a measured value is ordered by the metric's direction (lower error rate or
ASR is better, higher accuracy is better). A pair the paper orders strictly *agrees* when
the measured values order it the same way; otherwise it is a *contradiction* (the opposite
order, or a measured tie). Pairs the paper ties are counted apart and never contradict.
Agreement % = agreeing pairs / pairs the paper orders strictly. Kendall's τ (τ-b,
:func:`scipy.stats.kendalltau`) is computed between the published and the measured values
of the attack's defenses (NaN with fewer than two defenses or when one side is constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import pandas as pd
from scipy.stats import kendalltau

from byzbench.report.data import FRACTION
from byzbench.report.tables import DASH, ReportTable, Section, pct

# metric → (measured column, lower is better, display name)
TABLE_METRICS: dict[str, tuple[str, bool, str]] = {
    "error_rate": ("accuracy", True, "test error rate"),
    "accuracy": ("accuracy", False, "test accuracy"),
    "asr": ("asr", True, "backdoor ASR"),
}
ENTRY_KEYS = ("table", "column", "attack", "defense", "claimed_as", "metric", "value",
              "source", FRACTION)
ENTRY_REQUIRED = ("table", "attack", "defense", "metric", "value")


@dataclass(frozen=True)
class Published:
    """One cell of a paper's table."""

    table: str
    column: str           # the paper's column name
    attack: str           # byzbench attack label or registered name
    defense: str          # byzbench defense label or registered name
    claimed_as: str       # the paper's defense name
    metric: str
    value: float          # a fraction
    source: str
    fraction: float | None = None


def _pool(data_done: pd.DataFrame) -> pd.DataFrame:
    """Per (attack, defense, fraction, variant) cell group: the seed-mean of accuracy, ASR."""
    keys = ["attack", "attack_name", "defense", "defense_name", FRACTION, "variant"]
    frame = data_done[[*keys, "seed", "accuracy", "asr"]].copy()
    for column in ("attack", "defense", "variant"):
        frame[column] = frame[column].astype(str)
    return frame.groupby(keys, dropna=False).agg(
        accuracy=("accuracy", "mean"), asr=("asr", "mean"), seeds=("seed", "nunique"),
    ).reset_index()


def _match(pooled: pd.DataFrame, entry: Published) -> pd.DataFrame:
    rows = pooled[pooled["attack"] == entry.attack]
    if rows.empty:
        rows = pooled[pooled["attack_name"] == entry.attack]
    by_label = rows[rows["defense"] == entry.defense]
    rows = by_label if not by_label.empty else rows[rows["defense_name"] == entry.defense]
    if entry.fraction is not None:
        rows = rows[(rows[FRACTION] - entry.fraction).abs() < 1e-9]
    return rows


def measured_value(pooled: pd.DataFrame, entry: Published) -> tuple[float | None, int]:
    """The measured value of one published entry and the number of seeds behind it."""
    rows = _match(pooled, entry)
    column, _, _ = TABLE_METRICS[entry.metric]
    values = rows[column].dropna()
    if values.empty:
        return None, 0
    value = float(values.mean())
    if entry.metric == "error_rate":
        value = 1.0 - value
    return value, int(rows["seeds"].max())


def published_frame(entries: list[Published], done: pd.DataFrame) -> pd.DataFrame:
    """One row per published entry: published and measured values side by side."""
    pooled = _pool(done) if not done.empty else pd.DataFrame(
        columns=["attack", "attack_name", "defense", "defense_name", FRACTION, "variant",
                 "accuracy", "asr", "seeds"])
    rows = []
    for e in entries:
        value, seeds = measured_value(pooled, e)
        rows.append({"table": e.table, "column": e.column, "attack": e.attack,
                     "defense": e.defense, "claimed_as": e.claimed_as, "metric": e.metric,
                     "published": e.value, "measured": value, "seeds": seeds,
                     "difference": None if value is None else value - e.value,
                     "status": "" if value is not None else "not run",
                     "source": e.source})
    return pd.DataFrame(rows, columns=["table", "column", "attack", "defense", "claimed_as",
                                       "metric", "published", "measured", "seeds",
                                       "difference", "status", "source"])


def _order(a: float, b: float, lower_better: bool) -> int:
    """+1 when a is better than b, −1 when worse, 0 when tied."""
    if a == b:
        return 0
    return 1 if (a < b) == lower_better else -1


def _describe(order: int, a: str, b: str, va: float, vb: float) -> str:
    values = f"({pct(va)} vs {pct(vb)})"
    if order == 0:
        return f"{a} = {b} {values}"
    return (f"{a} better than {b} {values}" if order > 0 else f"{b} better than {a} "
            f"({pct(vb)} vs {pct(va)})")


def ordering_frames(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-attack summary, every pair) from :func:`published_frame`'s rows.

    Summary columns: table, column, metric, defenses, pairs, paper_ties, agree,
    contradictions, agreement (fraction; NaN without a strict pair), kendall_tau, p_value.
    Pair columns: table, column, metric, defense_a, defense_b, published_a, published_b,
    measured_a, measured_b, paper_order, measured_order (+1: a better, −1: b better, 0:
    tie), agrees (True/False; None for a pair the paper ties), paper, measured (in words).
    """
    summary, pairs = [], []
    usable = frame.dropna(subset=["measured"])
    for (table, column, metric), group in usable.groupby(["table", "column", "metric"],
                                                         sort=False):
        lower = TABLE_METRICS[metric][1]
        group = group.drop_duplicates(subset=["defense"], keep="first")
        names = group["defense"].astype(str).tolist()
        pub = group["published"].astype(float).tolist()
        mea = group["measured"].astype(float).tolist()
        agree = ties = contra = 0
        for i, j in combinations(range(len(names)), 2):
            po, mo = _order(pub[i], pub[j], lower), _order(mea[i], mea[j], lower)
            agrees = None if po == 0 else po == mo
            ties += po == 0
            agree += agrees is True
            contra += agrees is False
            pairs.append({"table": table, "column": column, "metric": metric,
                          "defense_a": names[i], "defense_b": names[j],
                          "published_a": pub[i], "published_b": pub[j],
                          "measured_a": mea[i], "measured_b": mea[j],
                          "paper_order": po, "measured_order": mo, "agrees": agrees,
                          "paper": _describe(po, names[i], names[j], pub[i], pub[j]),
                          "measured": _describe(mo, names[i], names[j], mea[i], mea[j])})
        strict = agree + contra
        tau, p = (math.nan, math.nan)
        if len(names) >= 2 and len(set(pub)) > 1 and len(set(mea)) > 1:
            result = kendalltau(pub, mea)
            tau, p = float(result.statistic), float(result.pvalue)
        summary.append({"table": table, "column": column, "metric": metric,
                        "defenses": len(names), "pairs": len(names) * (len(names) - 1) // 2,
                        "paper_ties": ties, "agree": agree, "contradictions": contra,
                        "agreement": agree / strict if strict else math.nan,
                        "kendall_tau": tau, "p_value": p})
    summary_cols = ["table", "column", "metric", "defenses", "pairs", "paper_ties", "agree",
                    "contradictions", "agreement", "kendall_tau", "p_value"]
    pair_cols = ["table", "column", "metric", "defense_a", "defense_b", "published_a",
                 "published_b", "measured_a", "measured_b", "paper_order", "measured_order",
                 "agrees", "paper", "measured"]
    return pd.DataFrame(summary, columns=summary_cols), pd.DataFrame(pairs, columns=pair_cols)


def overall(summary: pd.DataFrame) -> dict[str, Any]:
    """Pooled over attacks: agreeing / strict pairs, and the mean τ of the attacks."""
    agree = int(summary["agree"].sum()) if not summary.empty else 0
    strict = agree + (int(summary["contradictions"].sum()) if not summary.empty else 0)
    taus = summary["kendall_tau"].dropna() if not summary.empty else pd.Series(dtype=float)
    return {"agree": agree, "strict": strict,
            "agreement": agree / strict if strict else math.nan,
            "mean_tau": float(taus.mean()) if len(taus) else math.nan}


def _num(value: Any, digits: int = 2) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{float(value):+.{digits}f}"


def published_tables(entries: list[Published], done: pd.DataFrame,
                     name: str) -> list[ReportTable]:
    """The three report tables: published vs measured, orderings, contradictions; one
    table with a note when the reference holds no published cell (``table: []``)."""
    if not entries:
        return [ReportTable(
            "published", "Published versus measured",
            f"{name}: the reference file holds no published value (table: []).", [],
            published_frame([], done),
            empty_note="no published value in the reference file yet: nothing to compare "
                       "(its comments say what is missing)")]
    frame = published_frame(entries, done)
    summary, pairs = ordering_frames(frame)
    side = pd.DataFrame({
        "table": frame["table"], "column": frame["column"],
        "defense": [f"{d} ({c})" if c and c != d else d
                    for d, c in zip(frame["defense"], frame["claimed_as"])],
        "metric": [TABLE_METRICS[m][2] + " %" for m in frame["metric"]],
        "published": [pct(v) for v in frame["published"]],
        "measured": [s if s else pct(v) for v, s in zip(frame["measured"], frame["status"])],
        "difference": [DASH if d is None or pd.isna(d) else f"{100 * float(d):+.1f} pp"
                       for d in frame["difference"]],
        "source": frame["source"],
    })
    tables = [ReportTable(
        "published", "Published versus measured",
        f"The published table cells of {name} beside the measured values (final test "
        "accuracy or backdoor ASR averaged over seeds; error rate = 1 − accuracy). "
        "Difference = measured − published, in percentage points. 'not run': no finished "
        "cell of that attack and defense in these results.",
        [Section("", side)], frame)]
    totals = overall(summary)
    order_display = pd.DataFrame({
        "table": summary["table"], "attack (paper column)": summary["column"],
        "metric": [TABLE_METRICS[m][2] for m in summary["metric"]],
        "defenses": summary["defenses"], "pairs": summary["pairs"],
        "paper ties": summary["paper_ties"], "agree": summary["agree"],
        "contradict": summary["contradictions"],
        "agreement %": [pct(v, 0) for v in summary["agreement"]],
        "Kendall τ": [_num(v) for v in summary["kendall_tau"]],
    })
    caption = ("Per attack, every pair of defenses ordered by the paper's values and by the "
               "measured ones (lower error rate / ASR is better). Agreement % = pairs ordered "
               "the same way / pairs the paper orders strictly (its ties are left out); "
               "Kendall τ-b between the published and measured values. ")
    if totals["strict"]:
        caption += (f"Over all attacks: {totals['agree']} of {totals['strict']} pairs agree "
                    f"({pct(totals['agreement'], 0)}%), mean τ {_num(totals['mean_tau'])}.")
    tables.append(ReportTable("orderings", "Orderings: paper versus measured", caption,
                              [Section("", order_display)] if not summary.empty else [],
                              summary, empty_note="no attack has two defenses with both a "
                                                  "published and a measured value"))
    contra = pairs[pairs["agrees"] == False]  # noqa: E712 (None means a paper tie)
    contra_display = pd.DataFrame({
        "attack (paper column)": contra["column"],
        "pair": [f"{a} / {b}" for a, b in zip(contra["defense_a"], contra["defense_b"])],
        "paper": contra["paper"], "measured": contra["measured"],
    })
    tables.append(ReportTable(
        "contradictions", "Ordering contradictions",
        "Each pair of defenses the paper orders one way and the measurement the other "
        "(or ties). The CSV holds every pair, agreeing ones too (column agrees).",
        [Section("", contra_display)] if not contra.empty else [], pairs,
        empty_note="none: every pair the paper orders strictly is ordered the same way"))
    return tables


__all__ = ["Published", "TABLE_METRICS", "ordering_frames", "overall", "published_frame",
           "published_tables"]
