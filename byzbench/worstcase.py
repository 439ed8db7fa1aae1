"""A defense's worst case: its lowest accuracy over every attack it faced, with a bootstrap
interval over seeds. One definition, used by the report's "Which defense?" ranking
(:mod:`byzbench.report.ranking`) and by the regression gate (:mod:`byzbench.regression`).

Per group (a defense at one malicious fraction, plus any extra grid axis) and per attack,
the final accuracy is averaged over seeds; the worst case is the minimum of those means
over the attacks, the benign baseline (``none``, any attack class with ``benign = True``)
left out. Its uncertainty is a seeded percentile bootstrap over seeds: each resample draws
every (group, attack) cell's per-seed accuracies with replacement (as many as it has),
recomputes the minimum over attacks of the means, and the interval is the 2.5th and 97.5th
percentiles of :data:`SAMPLES` resamples. The generator is seeded by :data:`SEED` and the
group's key, so a row's interval is the same whatever other rows are in the frame. With one
seed per cell the interval is the point. Because a minimum of resampled means is biased
downward, the interval is widened to contain the point estimate where it would not.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SAMPLES = 2000      # bootstrap resamples per group
LEVEL = 0.95        # coverage of the percentile interval
SEED = 0            # base seed of the bootstrap generators

COLUMNS = ["worst_accuracy", "ci_low", "ci_high", "worst_attack", "attacks", "seeds",
           "adaptive_tested"]


@dataclass(frozen=True)
class AttackTraits:
    """What the report and the gate need to know about an attack class."""

    stage: str       # data / update / transport, "unknown" when the name does not resolve
    benign: bool     # the clean baseline: not an attack for the worst case
    aware: bool      # defense-aware (adaptive): it queries the defense oracle


def attack_traits(name: str) -> AttackTraits:
    """The traits of the attack registered (or plugged in as ``module:Class``) as ``name``;
    a name that does not resolve is of unknown stage, not aware, and benign only if it is
    ``none``."""
    from byzbench.registry import ATTACKS

    try:
        cls = ATTACKS.get(name)
    except Exception:  # unknown name, a plugin that no longer imports
        return AttackTraits("unknown", name == "none", False)
    return AttackTraits(str(getattr(cls, "stage", "unknown")),
                        bool(getattr(cls, "benign", False)), bool(getattr(cls, "aware", False)))


def _bootstrap_min(values: list[np.ndarray], rng: np.random.Generator, samples: int
                   ) -> np.ndarray:
    """``samples`` bootstrap draws of min over cells of the mean of each cell's values
    (each cell resampled with replacement at its own size), as one vectorized draw."""
    counts = np.array([len(v) for v in values])
    width = int(counts.max())
    padded = np.zeros((len(values), width))
    mask = np.arange(width)[None, :] < counts[:, None]
    padded[mask] = np.concatenate(values)
    idx = rng.integers(0, counts[None, :, None], size=(samples, len(values), width))
    drawn = np.take_along_axis(padded[None, :, :], idx, axis=2)           # [B, cells, width]
    means = np.where(mask[None], drawn, 0.0).sum(axis=2) / counts[None, :]
    return means.min(axis=1)


def _group_seed(key: tuple, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(repr(key).encode("utf-8"))])


def worst_case(cells: pd.DataFrame, keys: Sequence[str], *, samples: int = SAMPLES,
               level: float = LEVEL, seed: int = SEED) -> pd.DataFrame:
    """Worst-case accuracy per group of ``keys``.

    ``cells``: one row per finished cell with ``keys``, ``attack`` (label), ``seed``,
    ``accuracy`` and ``benign`` (bool), and optionally ``aware`` (bool). Returns one row per
    group that has at least one non-benign cell with an accuracy: ``keys`` +
    ``worst_accuracy`` (min over attacks of the mean over seeds), ``ci_low``/``ci_high``
    (the bootstrap interval; NaN when ``samples`` is 0), ``worst_attack`` (the attack that
    gives the minimum, the first in ``cells``' order on a tie), ``attacks`` (how many),
    ``seeds`` (the fewest seeds of an attack) and ``adaptive_tested`` (whether any attack of
    the group was defense-aware; False without an ``aware`` column). Groups are in order
    of first appearance.
    """
    keys = list(keys)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    attacked = cells[~cells["benign"].astype(bool)].dropna(subset=["accuracy"])
    if attacked.empty:
        return pd.DataFrame(columns=[*keys, *COLUMNS])
    attacked = attacked.assign(
        aware=attacked["aware"].astype(bool) if "aware" in attacked else False,
        _first=np.arange(len(attacked)))
    for column in [*keys, "attack"]:  # plain values: no unobserved categorical groups
        if isinstance(attacked[column].dtype, pd.CategoricalDtype):
            attacked[column] = attacked[column].astype(object)
    group_keys = [*keys, "attack"]
    per_seed = attacked.groupby([*group_keys, "seed"], sort=False, dropna=False).agg(
        accuracy=("accuracy", "mean"), aware=("aware", "any"),
        _first=("_first", "min")).reset_index()
    per_cell = per_seed.groupby(group_keys, sort=False, dropna=False).agg(
        mean=("accuracy", "mean"), seeds=("accuracy", "size"), aware=("aware", "any"),
        _first=("_first", "min"),
        values=("accuracy", lambda s: s.to_numpy(dtype=float))).reset_index()
    per_cell = per_cell.sort_values("_first", kind="stable").reset_index(drop=True)

    alpha = (1.0 - level) / 2.0
    rows = []
    for key, part in per_cell.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        worst = part.loc[part["mean"].idxmin()]
        point = float(worst["mean"])
        low = high = np.nan
        if samples > 0:
            draws = _bootstrap_min(list(part["values"]),
                                   np.random.default_rng(_group_seed(key, seed)), samples)
            low, high = np.quantile(draws, [alpha, 1.0 - alpha])
            low, high = min(float(low), point), max(float(high), point)
        rows.append({**dict(zip(keys, key)), "worst_accuracy": point, "ci_low": low,
                     "ci_high": high, "worst_attack": worst["attack"],
                     "attacks": int(len(part)), "seeds": int(part["seeds"].min()),
                     "adaptive_tested": bool(part["aware"].any())})
    return pd.DataFrame(rows, columns=[*keys, *COLUMNS])


def strict_ranks(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rank of each interval [low, high]: 1 + how many others lie entirely above it
    (their low > its high); equal ranks are ties, and intervals that overlap are never
    put in order. NaN intervals get rank 0 (unranked) and count for nobody."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    valid = ~(np.isnan(low) | np.isnan(high))
    above = (low[None, :] > high[:, None]) & valid[None, :]
    return np.where(valid, 1 + above.sum(axis=1), 0).astype(int)


def rank_ranges(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The places each interval [low, high] can take among the valid ones: best =
    1 + how many lie entirely above it (:func:`strict_ranks`), worst = the number of valid
    intervals − how many lie entirely below it. Intervals that overlap get overlapping
    ranges, so they are never put in order. NaN intervals get (0, 0)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    valid = ~(np.isnan(low) | np.isnan(high))
    below = (high[None, :] < low[:, None]) & valid[None, :]
    worst = np.where(valid, int(valid.sum()) - below.sum(axis=1), 0).astype(int)
    return strict_ranks(low, high), worst


__all__ = ["COLUMNS", "LEVEL", "SAMPLES", "SEED", "AttackTraits", "attack_traits",
           "rank_ranges", "strict_ranks", "worst_case"]
