"""The report's plots: matplotlib figures rendered headless (Agg) to PNG files.

- ``accuracy_heatmap.png`` — final accuracy, attack × defense, one panel per malicious
  fraction, on one fixed colour scale from 10% to 100%;
- ``detection_vs_fpr.png`` — detection rate against false-positive rate, one point per
  defense, one panel per attack family (data poisoning, model poisoning, transport);
- ``accuracy_vs_fraction.png`` — accuracy against malicious fraction, one line per defense
  (± std over seeds), one panel per attack;
- ``curves.png`` — accuracy (and backdoor ASR) over rounds for the selected cells, mean
  with a ± std band over seeds;
- ``aggregation_cost.png`` — median aggregation time per round per defense.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global state), so
nothing depends on a display or on the user's backend. Each defense keeps one colour and
marker in every plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from byzbench.atomic import write_atomic
from byzbench.report.data import FRACTION, ROW_KEYS, ReportData, micro_detection, plain_keys
from byzbench.report.tables import frac_text, row_label, span_text

DPI = 110
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
FAMILIES = ["data poisoning", "model poisoning", "transport", "other"]
ACC_MIN, ACC_MAX = 0.1, 1.0   # the heatmap's fixed colour scale: 10% (chance on 10 classes)


@dataclass(frozen=True)
class Plot:
    """A written PNG and what it shows."""

    key: str
    path: Path
    title: str
    caption: str


class Styles:
    """One colour and marker per defense (+ variant) label, stable across plots."""

    def __init__(self, labels: list[str]) -> None:
        cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
        count = 10 if len(labels) <= 10 else 20
        self.order = labels
        self.color = {lab: cmap(i % count) for i, lab in enumerate(labels)}
        self.marker = {lab: MARKERS[i % len(MARKERS)] for i, lab in enumerate(labels)}


def _labels(frame: pd.DataFrame) -> list[str]:
    return [row_label(d, v) for d, v in zip(frame["defense"], frame["variant"])]


def _defense_order(data: ReportData) -> list[str]:
    pairs = plain_keys(data.cells[ROW_KEYS].drop_duplicates())
    rank_d = {d: i for i, d in enumerate(data.cells["defense"].cat.categories)}
    rank_v = {v: i for i, v in enumerate(data.cells["variant"].cat.categories)}
    pairs = pairs.assign(_d=pairs["defense"].map(rank_d), _v=pairs["variant"].map(rank_v))
    return _labels(pairs.sort_values(["_d", "_v"]))


def _save(fig: Figure, path: Path) -> None:
    # whole or not at all: a full disk leaves no truncated PNG behind
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, facecolor="white",
                                               format="png"))


def _legend_below(fig: Figure, handles: list, labels: list[str], title: str = "defense",
                  ncol: int | None = None) -> None:
    ncol = ncol or min(len(labels), 5)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, title=title,
               frameon=False, fontsize=9, title_fontsize=9)


def _floor_to(value: float, step: float) -> float:
    """Largest multiple of ``step`` below ``value`` minus a small margin, at least 0."""
    if not np.isfinite(value):
        return 0.0
    return max(0.0, float(np.floor((value - 2) / step) * step))


def _grid_shape(count: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(count, max_cols))
    return int(np.ceil(count / cols)), cols


# -- accuracy heatmap -----------------------------------------------------------------------

def accuracy_heatmap(data: ReportData, accuracy: pd.DataFrame, path: Path) -> Plot | None:
    """Panels per fraction; rows attacks, columns defenses; cells annotated in %."""
    if accuracy.empty:
        return None
    attacks = [str(a) for a in data.cells["attack"].cat.categories]
    defenses = _defense_order(data)
    frame = accuracy.assign(_col=_labels(accuracy), _row=accuracy["attack"].astype(str))
    status = plain_keys(data.not_done).assign()
    status = status.assign(_col=_labels(status), _row=status["attack"].astype(str)) \
        if not status.empty else status
    fractions = sorted(set(frame[FRACTION]) | set(status[FRACTION] if len(status) else []))
    panel_w = 1.6 + 0.72 * len(defenses)
    panel_h = 1.3 + 0.42 * len(attacks)
    rows, cols = _grid_shape(len(fractions), max(1, int(13 // panel_w)))
    fig = Figure(figsize=(panel_w * cols + 1.2, panel_h * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    cmap = colormaps["viridis"].with_extremes(bad="#e6e6e6", under=colormaps["viridis"](0.0))
    norm = Normalize(ACC_MIN, ACC_MAX)
    image = None
    for ax, fraction in zip(axes, fractions):
        part = frame[np.isclose(frame[FRACTION], fraction)]
        grid = part.pivot_table(index="_row", columns="_col", values="accuracy_mean",
                                aggfunc="first").reindex(index=attacks, columns=defenses)
        grid = grid.dropna(how="all", axis=0) if len(grid.dropna(how="all")) else grid
        shown_rows = [a for a in attacks if a in set(part["_row"]) or
                      (len(status) and a in set(status["_row"]))]
        grid = grid.reindex(index=shown_rows)
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(defenses)), defenses, rotation=35, ha="right", fontsize=9)
        ax.set_yticks(range(len(shown_rows)), shown_rows, fontsize=9)
        ax.set_title(f"malicious fraction {frac_text(float(fraction))}", fontsize=10)
        ax.set_xlabel("defense", fontsize=9)
        ax.set_ylabel("attack", fontsize=9)
        ax.set_xticks(np.arange(-0.5, len(defenses)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(shown_rows)), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        stat = {}
        if len(status):
            here = status[np.isclose(status[FRACTION], fraction)]
            stat = {(r, c): s for r, c, s in zip(here["_row"], here["_col"], here["status"])}
        for i, attack in enumerate(shown_rows):
            for j, defense in enumerate(defenses):
                value = values[i, j]
                if np.isnan(value):
                    text = {"skipped": "skip", "failed": "fail"}.get(stat.get((attack, defense)),
                                                                    "")
                    if text:
                        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                                color="#555555", style="italic")
                    continue
                shade = norm(max(value, ACC_MIN))
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.55 else "white")
    for ax in axes[len(fractions):]:
        ax.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[:len(fractions)]), extend="min", shrink=0.9,
                           pad=0.02)
        ticks = np.linspace(ACC_MIN, ACC_MAX, 10 if fig.get_figheight() >= 4.5 else 4)
        bar.set_ticks(ticks, labels=[f"{int(round(100 * t))}" for t in ticks])
        bar.set_label("final test accuracy (%)", fontsize=9)
    fig.suptitle("Final test accuracy (%), mean over seeds", fontsize=11)
    _save(fig, path)
    return Plot("accuracy_heatmap", path, "Accuracy heatmap",
                "Final clean test accuracy in % (mean over seeds), attack × defense, one panel "
                "per malicious fraction; the colour scale runs from 10% (chance on ten "
                "classes, and below) to 100%. Grey: no finished cell ('skip' = skipped, "
                "'fail' = failed).")


# -- detection vs FPR -----------------------------------------------------------------------

def detection_scatter(data: ReportData, styles: Styles, path: Path) -> Plot | None:
    attacked = data.attacked
    if attacked.empty:
        return None
    det = plain_keys(micro_detection(attacked, [*ROW_KEYS, "family"]))
    det = det.assign(_label=_labels(det))
    families = [f for f in FAMILIES if f in set(det["family"])]
    decided = det[det["flags"].astype(bool)]
    no_decision = sorted(set(det.loc[~det["flags"].astype(bool), "_label"]),
                         key=styles.order.index)
    rows, cols = _grid_shape(len(families), 3)
    fig = Figure(figsize=(4.6 * cols + 0.4, 4.2 * rows + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    max_fpr = float(np.nanmax(decided["fpr"].to_numpy(dtype=float))) if len(decided) else 0.0
    xmax = 100 * max(0.1, min(1.0, 1.15 * (max_fpr if np.isfinite(max_fpr) else 0.1)))
    order = styles.order
    sizes = np.linspace(190, 45, max(len(order), 2))
    handles: dict[str, object] = {}
    for ax, family in zip(axes, families):
        part = decided[decided["family"] == family]
        part = part.assign(_rank=part["_label"].map(order.index)).sort_values("_rank")
        for _, row in part.iterrows():
            label = row["_label"]
            if pd.isna(row["detection_rate"]) and pd.isna(row["fpr"]):
                continue
            handle = ax.scatter(100 * float(np.nan_to_num(row["fpr"], nan=0.0)),
                                100 * float(np.nan_to_num(row["detection_rate"], nan=0.0)),
                                s=sizes[order.index(label)], color=styles.color[label],
                                marker=styles.marker[label], edgecolor="black",
                                linewidth=0.6, alpha=0.9, zorder=3)
            handles.setdefault(label, handle)
        attacks = ", ".join(dict.fromkeys(
            attacked.loc[attacked["family"] == family, "attack"].astype(str)))
        ax.set_title(f"{family}\n({attacks})", fontsize=10)
        ax.set_xlim(-0.03 * xmax, xmax)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("false-positive rate (% of honest clients flagged)", fontsize=9)
        ax.set_ylabel("detection rate (% of malicious clients flagged)", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(families):]:
        ax.set_visible(False)
    labels = [lab for lab in order if lab in handles]
    if labels:
        _legend_below(fig, [handles[lab] for lab in labels], labels)
    note = ("detection micro-averaged over rounds, seeds, attacks and fractions of the family"
            + (f"; no per-client decision (n/a): {', '.join(no_decision)}" if no_decision
               else ""))
    fig.suptitle("Detection rate against false-positive rate (top left is ideal)\n" + note,
                 fontsize=10)
    _save(fig, path)
    return Plot("detection_vs_fpr", path, "Detection rate against false-positive rate",
                "One point per defense and attack family (data poisoning, model poisoning, "
                "transport): detection rate (recall) against false-positive rate, both "
                "micro-averaged over rounds, seeds, the family's attacks and the malicious "
                "fractions; the ideal is the top-left corner. Marker size shrinks along the "
                "legend so that coinciding points stay visible. Defenses that flag nobody by "
                "design are named in the title instead.")


# -- accuracy vs fraction -------------------------------------------------------------------

def accuracy_lines(data: ReportData, accuracy: pd.DataFrame, styles: Styles, path: Path
                   ) -> Plot | None:
    attacked_names = set(data.attacked["attack"].astype(str))
    frame = accuracy[accuracy["attack"].astype(str).isin(attacked_names)]
    if frame.empty:
        return None
    frame = frame.assign(_label=_labels(frame))
    attacks = [str(a) for a in data.cells["attack"].cat.categories if str(a) in
               set(frame["attack"].astype(str))]
    rows, cols = _grid_shape(len(attacks), 4)
    fig = Figure(figsize=(3.9 * cols + 0.4, 3.3 * rows + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    fractions = sorted(frame[FRACTION].unique())
    baseline = plain_keys(data.baseline)
    base = baseline["accuracy"].mean() if len(baseline) else np.nan
    handles: dict[str, object] = {}
    present = [lab for lab in styles.order if lab in set(frame["_label"])]
    step = 100 * float(np.diff(fractions).min()) if len(fractions) > 1 else 10.0
    dodge = {lab: (i - (len(present) - 1) / 2) * min(0.3 * step / max(len(present), 1), 0.4)
             for i, lab in enumerate(present)}
    low = 100 * float(np.nanmin(frame["accuracy_mean"] - frame["accuracy_std"].fillna(0)))
    if np.isfinite(base):
        low = min(low, 100 * base)
    common_low = _floor_to(low, 10)
    for ax, attack in zip(axes, attacks):
        part = frame[frame["attack"].astype(str) == attack]
        for label in present:
            line = part[part["_label"] == label].sort_values(FRACTION)
            if line.empty:
                continue
            x = 100 * line[FRACTION].to_numpy(dtype=float) + dodge[label]
            y = 100 * line["accuracy_mean"].to_numpy(dtype=float)
            err = 100 * line["accuracy_std"].fillna(0).to_numpy(dtype=float)
            handle = ax.errorbar(x, y, yerr=err, color=styles.color[label],
                                 marker=styles.marker[label], markersize=5, linewidth=1.5,
                                 capsize=2.5, elinewidth=1, label=label)
            handles.setdefault(label, handle)
        if np.isfinite(base):
            ax.axhline(100 * base, color="#888888", linestyle=":", linewidth=1)
        ax.set_title(f"attack: {attack}", fontsize=10)
        ax.set_xticks([100 * f for f in fractions])
        ax.set_xlim(100 * fractions[0] - 3, 100 * fractions[-1] + 3)
        ax.set_ylim(common_low, 101)  # one accuracy axis for every panel
        ax.set_xlabel("malicious clients (%)", fontsize=9)
        ax.set_ylabel("final test accuracy (%)", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(attacks):]:
        ax.set_visible(False)
    labels = [lab for lab in styles.order if lab in handles]
    _legend_below(fig, [handles[lab] for lab in labels], labels)
    fig.suptitle("Accuracy against malicious fraction (mean ± std over seeds; one accuracy "
                 "axis for all panels)"
                 + ("; dotted: mean accuracy without attack" if np.isfinite(base) else ""),
                 fontsize=11)
    _save(fig, path)
    return Plot("accuracy_vs_fraction", path, "Accuracy against malicious fraction",
                "Final clean test accuracy in % against the percentage of malicious clients, "
                "one line per defense (error bars: ± std over seeds; points offset slightly "
                "sideways so that coinciding lines stay visible), one panel per attack, all "
                "panels on the same accuracy axis so they compare at a glance; the dotted "
                "line is the mean "
                "accuracy without attack over all defenses.")


# -- curves over rounds ---------------------------------------------------------------------

def round_curves(curves: pd.DataFrame, styles: Styles, why: str, path: Path) -> Plot | None:
    if curves.empty:
        return None
    frame = curves.assign(_defense=_labels(curves))
    varying = [k for k in ("attack", FRACTION) if frame[k].nunique() > 1]
    group_keys = ["defense", "variant", "attack", FRACTION]
    has_asr = frame["asr_mean"].notna().any()
    fig = Figure(figsize=(11.5 if has_asr else 7.0, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if has_asr else 1, squeeze=False)).ravel()
    linestyles = ["-", "--", "-.", ":"]
    extra_values = {k: list(dict.fromkeys(frame[k])) for k in varying}
    handles, labels = [], []
    groups = frame.groupby(group_keys, sort=False)
    band_alpha = 0.15 if groups.ngroups <= 4 else 0.07
    one_defense = frame["_defense"].nunique() == 1
    for (defense, variant, attack, fraction), line in groups:
        label_d = row_label(defense, variant)
        parts = [label_d]
        if "attack" in varying:
            parts.append(str(attack))
        if FRACTION in varying:
            parts.append(frac_text(float(fraction)))
        style_index = 0
        for key, value in (("attack", attack), (FRACTION, fraction)):
            if key in varying:
                style_index = style_index * len(extra_values[key]) + extra_values[key].index(value)
        if one_defense:  # colour tells the attacks / fractions apart
            style = {"color": colormaps["tab10"](style_index % 10), "linestyle": "-"}
        else:
            style = {"color": styles.color.get(label_d, "black"),
                     "linestyle": linestyles[style_index % len(linestyles)]}
        line = line.sort_values("round")
        x = line["round"].to_numpy(dtype=float) + 1
        for ax, metric in zip(axes, ("accuracy", "asr")):
            mean = 100 * line[f"{metric}_mean"].to_numpy(dtype=float)
            if np.isnan(mean).all():
                continue
            std = 100 * line[f"{metric}_std"].fillna(0).to_numpy(dtype=float)
            (handle,) = ax.plot(x, mean, marker=styles.marker.get(label_d, "o"), markersize=4,
                                linewidth=1.6, **style)
            ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=band_alpha,
                            linewidth=0)
            if metric == "accuracy":
                handles.append(handle)
                labels.append(" · ".join(parts))
    axes[0].set_ylabel("test accuracy (%)", fontsize=9)
    axes[0].set_title("clean test accuracy", fontsize=10)
    if has_asr:
        axes[1].set_ylabel("backdoor attack-success rate (%)", fontsize=9)
        axes[1].set_title("backdoor ASR (cells where a backdoor ran)", fontsize=10)
    eval_rounds = sorted(set(frame["round"].astype(int) + 1))
    for ax in axes:
        if len(eval_rounds) <= 12:
            ax.set_xticks(eval_rounds)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rounds completed", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fixed = []
    if "attack" not in varying:
        fixed.append(f"attack {frame['attack'].iloc[0]}")
    if FRACTION not in varying:
        fixed.append(f"{frac_text(float(frame[FRACTION].iloc[0]))} malicious")
    _legend_below(fig, handles, labels, title="defense" + (" · " + " · ".join(
        k if k == "attack" else "fraction" for k in varying) if varying else ""),
        ncol=min(len(labels), 4))
    fig.suptitle("Over rounds: mean with a ± std band over seeds"
                 + (f" ({', '.join(fixed)})" if fixed else ""), fontsize=11)
    _save(fig, path)
    return Plot("curves", path, "Accuracy and ASR over rounds",
                f"Clean test accuracy (and backdoor ASR where a backdoor ran) in % at each "
                f"evaluation round, mean over seeds with a ± std band; cells: {why}.")


# -- aggregation cost -----------------------------------------------------------------------

def cost_bars(data: ReportData, styles: Styles, path: Path) -> Plot | None:
    done = plain_keys(data.done).dropna(subset=["agg_ms"])
    if done.empty:
        return None
    done = done.assign(_label=_labels(done))
    stats = done.groupby("_label", sort=False).agg(
        median=("agg_ms", "median"), q1=("agg_ms", lambda s: s.quantile(0.25)),
        q3=("agg_ms", lambda s: s.quantile(0.75)), verify=("verify_ms", "median"))
    stats = stats.reindex([lab for lab in styles.order if lab in stats.index])
    stats = stats.sort_values("median")
    labels = list(stats.index)
    fig = Figure(figsize=(7.5, 1.4 + 0.42 * len(labels)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))
    med = stats["median"].to_numpy(dtype=float)
    err = np.vstack([med - stats["q1"].to_numpy(dtype=float),
                     stats["q3"].to_numpy(dtype=float) - med]).clip(min=0)
    ax.barh(y, med, xerr=err, color=[styles.color[lab] for lab in labels],
            edgecolor="black", linewidth=0.5, capsize=3, error_kw={"elinewidth": 1})
    verify = stats["verify"].to_numpy(dtype=float)
    positive = med[med > 0]
    log = bool(len(positive) and positive.max() / positive.min() > 30)
    if log:
        ax.set_xscale("log")
    elif np.isfinite(verify).any():
        # a part of a bar is honest only on a linear axis: on a log axis the share is told
        # in the bar's label instead
        ax.barh(y, np.nan_to_num(verify), fill=False, hatch="///", edgecolor="#333333",
                linewidth=0, label="of which signature verification")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ends = stats["q3"].to_numpy(dtype=float)
    for yi, value, end, part in zip(y, med, np.fmax(ends, med), verify):
        share = (f" ({100 * part / value:.0f}% verifying signatures)"
                 if np.isfinite(part) and value > 0 else "")
        ax.text(end * (1.12 if log else 1.0) + (0 if log else 0.015 * np.nanmax(ends)), yi,
                f"{value:.3g} ms{share}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=9)
    far = float(np.nanmax(np.fmax(ends, med)))
    ax.set_xlim(right=far * (20 if log else 1.6))
    ax.set_xlabel("aggregation time per round (ms, median; whiskers: 25–75% over cells)"
                  + (", log scale" if log else ""), fontsize=9)
    ax.grid(axis="x", alpha=0.3, which="both")
    devices = sorted({str(c.get("device", "?")) for c in done["config"]})
    ax.set_title(f"Aggregation cost per defense (n = {span_text(done['n'])} clients/round, "
                 f"d = {span_text(done['d'])} parameters, {', '.join(devices)})", fontsize=10)
    _save(fig, path)
    return Plot("aggregation_cost", path, "Aggregation cost",
                "Median wall time of the defense's aggregation per round in ms (median over "
                "rounds within a cell, then over the defense's cells; whiskers: 25th–75th "
                "percentile over cells), n clients per round and d parameters in the title; "
                "the share spent verifying signatures is written beside the bar (and "
                "hatched inside it when the axis is linear; on a log axis a part of a bar "
                "would not be to scale).")


def all_plots(data: ReportData, accuracy: pd.DataFrame, curves: pd.DataFrame, why: str,
              directory: Path) -> list[Plot]:
    """Write every plot that has data into ``directory``; returns those written."""
    directory.mkdir(parents=True, exist_ok=True)
    styles = Styles(_defense_order(data))
    made = [
        accuracy_heatmap(data, accuracy, directory / "accuracy_heatmap.png"),
        detection_scatter(data, styles, directory / "detection_vs_fpr.png"),
        accuracy_lines(data, accuracy, styles, directory / "accuracy_vs_fraction.png"),
        round_curves(curves, styles, why, directory / "curves.png"),
        cost_bars(data, styles, directory / "aggregation_cost.png"),
    ]
    return [p for p in made if p is not None]
