"""Loading a results directory for the report, and the tidy aggregations every table uses.

:func:`load` reads the database into one frame of cells with the columns the report
groups by: ``defense`` / ``attack`` (display labels), ``malicious_fraction``, ``seed``,
``variant`` (the values of any extra grid axis, e.g. ``partition.alpha=0.1``; ``""`` when
the grid has none), the registered component names, the attack's stage, whether the
attack is the benign baseline (``none``) and whether it is defense-aware (``aware``).
Cells left over from an earlier version of a grid (the grid was edited; their ids are no
longer in the grid's registered cell list) are dropped, so one configuration is never
averaged with another under the same labels.

The aggregations follow DESIGN.md: accuracy and ASR as mean ± std over seeds with ``n``
the number of seeds; detection micro-averaged (counts summed over rounds, seeds and every
other pooled cell, then divided with :func:`byzbench.metrics.detection_rates`), ``None``
("n/a") wherever a pooled cell has no counts because its defense flags nobody by design.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from byzbench.config import STANDARD_AXES
from byzbench.metrics import COUNT_KEYS, detection_rates
from byzbench.store import ResultsStore, StoreError
from byzbench.worstcase import attack_traits

FRACTION = "malicious_fraction"
ROW_KEYS = ["defense", "variant"]          # one row of the comparative analysis
CELL_KEYS = ["defense", "variant", "attack", FRACTION]   # one cell of the grid, seeds pooled
RATE_KEYS = ("detection_rate", "fpr", "precision", "f1")
STAGE_FAMILY = {"data": "data poisoning", "update": "model poisoning",
                "transport": "transport"}


class ReportError(ValueError):
    """Input the report cannot use (no database, an empty one, a filter matching nothing);
    the message is meant to be shown as it is."""


@dataclass
class ReportData:
    """The cells of a results directory, filtered, ready to aggregate."""

    directory: Path
    cells: pd.DataFrame          # every selected cell (done, skipped, failed)
    rounds: pd.DataFrame         # round rows of the selected done cells
    baseline: pd.DataFrame       # done cells of the benign attack (kept even when --attack
                                 # filters it out, for the accuracy drop)
    grids: list[str] = field(default_factory=list)
    description: str = ""
    extra_axes: list[str] = field(default_factory=list)
    stale: int = 0               # cells of an earlier grid version, left out
    filters: dict[str, list[str]] = field(default_factory=dict)
    not_run: int = 0             # cells of the registered grid with no stored result yet
    grid_size: int = 0           # cells of the registered grid(s)
    source: str = ""             # the grid file the run was started from

    @property
    def done(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "done"]

    @property
    def attacked(self) -> pd.DataFrame:
        """Done cells under a real attack (not the benign baseline)."""
        done = self.done
        return done[~done["benign"]]

    @property
    def not_done(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] != "done"]


# -- loading --------------------------------------------------------------------------------

def _scalar(value: Any) -> Any:
    """A hashable, printable axis value (lists and mappings as compact JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _current_ids(meta: dict[str, str]) -> dict[str, set[str]]:
    """grid name → ids of the cells of its latest registered version."""
    out: dict[str, set[str]] = {}
    for key, value in meta.items():
        if key.startswith("cells:"):
            try:
                out[key.removeprefix("cells:")] = set(json.loads(value))
            except (TypeError, ValueError):
                continue
    return out


def _ordered(values: pd.Series) -> list[Any]:
    """Distinct values in order of first appearance (the grid's axis order)."""
    return list(dict.fromkeys(values.tolist()))


def _parse_fraction(text: str) -> float:
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        raise ReportError(f"--fraction: '{text}' is not a number (write 0.2 or 20%)") from None
    if not 0.0 <= value < 1.0:
        raise ReportError(f"--fraction: {text} is outside [0, 1) (write 0.2 or 20%)")
    return value


def split_values(values: Sequence[str] | None) -> list[str]:
    """Repeatable, comma-separated option values → one flat list."""
    return [part.strip() for value in values or () for part in str(value).split(",")
            if part.strip()]


def _match_names(frame: pd.DataFrame, column: str, wanted: list[str], option: str
                 ) -> pd.Series:
    """Rows whose label (``column``) or registered name (``column_name``) is in ``wanted``;
    a wanted value matching nothing is an error listing what there is."""
    import difflib

    labels = frame[column].astype(str)
    names = frame[f"{column}_name"].astype(str)
    available = sorted(set(labels) | set(names))
    for value in wanted:
        if value not in available:
            close = difflib.get_close_matches(value, available, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ReportError(f"{option} '{value}' matches no cell{hint} "
                              f"(in the results: {', '.join(available) or 'none'})")
    return labels.isin(wanted) | names.isin(wanted)


def load(results_dir: str | Path, fractions: Sequence[str] | None = None,
         attacks: Sequence[str] | None = None, defenses: Sequence[str] | None = None
         ) -> ReportData:
    """Read ``results_dir``'s database, keep the current cells, apply the filters.

    Raises :class:`ReportError` for a missing or empty database and for a filter value
    that matches no cell.
    """
    directory = Path(results_dir)
    if not directory.exists():
        raise ReportError(f"no results directory {directory} (run 'byzbench run GRID' first)")
    try:
        store = ResultsStore.open(directory)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    except Exception as exc:  # sqlite3.DatabaseError: a file that is not SQLite
        raise ReportError(f"cannot read the results database in {directory}: {exc}") from None
    try:
        with store:
            meta = store.meta()
            cells = store.cells_frame()
            rounds = store.rounds_frame()
    except Exception as exc:
        raise ReportError(f"cannot read the results database in {directory}: {exc}") from None
    if cells.empty:
        raise ReportError(f"the results database in {directory} holds no cells yet "
                          f"(run 'byzbench run GRID -o {directory}' first)")

    current = _current_ids(meta)
    listed = cells["grid"].isin(list(current))
    pairs = pd.MultiIndex.from_tuples([(g, i) for g, ids in current.items() for i in ids],
                                      names=["grid", "cell_id"])
    in_current = pd.MultiIndex.from_frame(cells[["grid", "cell_id"]]).isin(pairs)
    keep = ~listed | in_current
    stale = int((~keep).sum())
    cells = cells[keep].copy()
    stored = set(zip(cells["grid"], cells["cell_id"]))
    grid_size = sum(len(ids) for ids in current.values())
    not_run = sum(1 for g, ids in current.items() for i in ids if (g, i) not in stored)

    cells["attack_name"] = cells["config"].map(lambda c: c["attack"]["name"])
    cells["defense_name"] = cells["config"].map(lambda c: c["defense"]["name"])
    facts = {name: attack_traits(name) for name in cells["attack_name"].unique()}
    cells["stage"] = cells["attack_name"].map(lambda n: facts[n].stage)
    cells["benign"] = cells["attack_name"].map(lambda n: facts[n].benign).astype(bool)
    cells["aware"] = cells["attack_name"].map(lambda n: facts[n].aware).astype(bool)
    cells["family"] = cells["stage"].map(lambda s: STAGE_FAMILY.get(s, "other"))

    extra = sorted({k for axes in cells["axes"] for k in axes} - set(STANDARD_AXES))
    if extra:
        axis_values = pd.DataFrame(
            [{k: _scalar(a.get(k)) for k in extra} for a in cells["axes"]], index=cells.index)
        parts = [f"{k}=" + axis_values[k].astype(str) for k in extra]
        variant = parts[0]
        for part in parts[1:]:
            variant = variant + ", " + part
        cells["variant"] = variant
    else:
        cells["variant"] = ""
    for column in ("attack", "defense", "variant"):
        order = _ordered(cells[column])
        if column == "attack":  # the benign baseline first
            benign = set(cells.loc[cells["benign"], "attack"])
            order = [a for a in order if a in benign] + [a for a in order if a not in benign]
        cells[column] = pd.Categorical(cells[column], categories=order, ordered=True)
    cells[FRACTION] = cells[FRACTION].astype(float)
    for column in (*COUNT_KEYS, "accuracy", "asr", "agg_ms", "sign_ms", "verify_ms"):
        cells[column] = pd.to_numeric(cells[column]).astype(float)

    filters: dict[str, list[str]] = {}
    mask = pd.Series(True, index=cells.index)
    wanted_fractions = split_values(fractions)
    if wanted_fractions:
        values = [_parse_fraction(v) for v in wanted_fractions]
        present = cells[FRACTION].unique()
        for text, value in zip(wanted_fractions, values):
            if not any(math.isclose(value, p, abs_tol=1e-9) for p in present):
                shown = ", ".join(f"{p:g}" for p in sorted(present))
                raise ReportError(f"--fraction {text} matches no cell (in the results: {shown})")
        mask &= np.isclose(cells[FRACTION].to_numpy()[:, None], np.array(values)[None, :],
                           rtol=0.0, atol=1e-9).any(axis=1)
        filters["fraction"] = wanted_fractions
    wanted_defenses = split_values(defenses)
    if wanted_defenses:
        mask &= _match_names(cells, "defense", wanted_defenses, "--defense")
        filters["defense"] = wanted_defenses
    baseline_mask = mask.copy()
    wanted_attacks = split_values(attacks)
    if wanted_attacks:
        mask &= _match_names(cells, "attack", wanted_attacks, "--attack")
        filters["attack"] = wanted_attacks
    selected = cells[mask]
    if selected.empty:
        raise ReportError("the filters leave no cell to report")
    for column in ("attack", "defense", "variant"):
        selected[column] = selected[column].cat.remove_unused_categories()
    baseline = cells[baseline_mask & cells["benign"] & (cells["status"] == "done")]

    done_ids = selected.loc[selected["status"] == "done", "cell_id"]
    rounds = rounds[rounds["cell_id"].isin(done_ids)]
    labels = selected[["cell_id", "variant", "family"]]
    rounds = rounds.drop(columns=["attack", "defense"]).merge(
        selected[["cell_id", "attack", "defense"]], on="cell_id").merge(labels, on="cell_id")

    grids = _ordered(selected["grid"])
    description = (meta.get("description", "") or "") \
        if len(grids) == 1 and meta.get("grid") == grids[0] else ""
    return ReportData(directory=directory, cells=selected, rounds=rounds, baseline=baseline,
                      grids=grids, description=description, extra_axes=extra, stale=stale,
                      filters=filters, not_run=not_run, grid_size=grid_size,
                      source=str(meta.get("source", "") or ""))


# -- aggregation ----------------------------------------------------------------------------

def over_seeds(frame: pd.DataFrame, keys: list[str], column: str) -> pd.DataFrame:
    """``column`` averaged per seed within each group, then mean ± std over the seeds.

    Returns ``keys`` + ``{column}_mean``, ``{column}_std`` (sample std, NaN for one seed)
    and ``n`` (number of seeds with a value).
    """
    per_seed = (frame.dropna(subset=[column])
                .groupby([*keys, "seed"], observed=True, dropna=False)[column].mean())
    stats = per_seed.groupby(level=list(range(len(keys))), observed=True, dropna=False
                             ).agg(["mean", "std", "count"])
    stats.columns = [f"{column}_mean", f"{column}_std", "n"]
    stats["n"] = stats["n"].astype(int)
    return stats.reset_index()


def micro_detection(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """ΣTP, ΣFP, ΣFN, ΣTN over every cell (so over rounds and seeds) of each group, and the
    rates of :func:`byzbench.metrics.detection_rates` from them.

    A group holding a cell without counts (its defense flags nobody by design) gets no
    counts and no rates ("n/a"), as :func:`byzbench.metrics.sum_counts` does for rounds;
    ``flags`` says whether the group has counts. Also ``n`` (seeds) and ``{rate}_std``: the
    std over seeds of the per-seed micro-averaged rate (NaN for one seed).
    """
    columns = [*keys, *COUNT_KEYS, *RATE_KEYS, "n", "flags"]
    if frame.empty:
        return pd.DataFrame(columns=[*columns, *(f"{k}_std" for k in RATE_KEYS)])
    counts = list(COUNT_KEYS)
    grouped = frame.assign(_nocount=frame[counts].isna().any(axis=1)).groupby(
        keys, observed=True, dropna=False)
    sums = grouped[counts].sum().astype("Int64")
    flags = ~grouped["_nocount"].any()
    sums = sums.where(flags.to_numpy()[:, None].repeat(len(counts), axis=1), pd.NA)
    rates = pd.DataFrame(
        [detection_rates(*(_int(v) for v in row)) for row in sums.itertuples(index=False)],
        index=sums.index, columns=list(RATE_KEYS)).astype(float)
    out = pd.concat([sums, rates], axis=1)
    out["n"] = grouped["seed"].nunique()
    out["flags"] = flags
    if "seed" not in keys:
        per_seed = micro_detection(frame, [*keys, "seed"])
        spread = per_seed.groupby(keys, observed=True, dropna=False)[list(RATE_KEYS)].std()
        for key in RATE_KEYS:
            out[f"{key}_std"] = spread[key]
    return out.reset_index()


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def plain_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical key columns (defense, attack, variant) as plain objects, so merges and
    groupbys match on values and never produce unobserved combinations."""
    out = frame.copy()
    for column in ("defense", "attack", "variant"):
        if column in out and isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(object)
    return out
