"""Coordinate-wise robust aggregators: median and trimmed mean (Yin et al., ICML 2018).

Each coordinate is aggregated on its own, so neither rule decides about a client as a
whole: ``flagged`` is ``None`` (detection "n/a") — except that the base class excludes and
flags rows holding NaN/Inf, so a round with non-finite rows reports them as detected.
``weights`` are effective weights: the share of coordinates at which each row is the
median (median) or survives the trimming (trimmed mean), normalised to sum to 1 (counted
on at most 65,536 evenly spaced coordinates for large d).
Both ignore incoming pipeline weights (they are unweighted rules).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import normalized_weights, sort_columns
from byzbench.registry import DEFENSES

YIN_PAPER = ("Yin, Chen, Ramchandran, Bartlett, Byzantine-Robust Distributed Learning: "
             "Towards Optimal Statistical Rates, ICML 2018")
_PRIVACY = Privacy(needs_plaintext_updates=True, needs_server_data=False,
                   keeps_client_state=False,
                   note="needs every plaintext update (per-coordinate order statistics)")


def trimmed_mean_of_sorted(srt: torch.Tensor, b: int) -> torch.Tensor:
    """Mean of the sorted columns after dropping ``b`` values at each end."""
    n = srt.shape[0]
    return srt[b:n - b].mean(dim=0)


SHARE_COORDS = 1 << 16


def _kept_share(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[n] share of coordinates at which each row lies in ``[lo, hi]`` (normalised).

    Counted exactly up to 65,536 coordinates; above, on that many evenly spaced coordinates
    (an estimate of a reported weight; the aggregate itself always uses every coordinate).
    """
    d = x.shape[1]
    if d > SHARE_COORDS:
        cols = torch.linspace(0, d - 1, SHARE_COORDS, device=x.device).long()
        x, lo, hi = x[:, cols], lo[cols], hi[cols]
    counts = ((x >= lo) & (x <= hi)).sum(dim=1).to(torch.float64)
    return normalized_weights(counts)


class _CoordinateBase(Defense):
    privacy: ClassVar[Privacy] = _PRIVACY
    paper: ClassVar[str] = YIN_PAPER
    stateless: ClassVar[bool] = True

    def _aggregate_rows(self, x: torch.Tensor, ctx: RoundContext
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(aggregate [d], effective weights [n]) of the rows ``x``."""
        raise NotImplementedError

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        aggregate, share = self._aggregate_rows(updates, ctx)
        return Verdict(aggregate=aggregate, weights=share.to(updates.dtype), flagged=None)


class MedianParams(DefenseParams):
    pass


@DEFENSES.register("median")
class Median(_CoordinateBase):
    """Coordinate-wise median (Yin et al., ICML 2018): each coordinate of the aggregate is
    the median of that coordinate over the clients (mean of the two middle values for even
    n). No per-client decision (flagged = None, except non-finite rows)."""

    Params: ClassVar[type[MedianParams]] = MedianParams

    def _aggregate_rows(self, x: torch.Tensor, ctx: RoundContext
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        srt = sort_columns(x)
        lo, hi = srt[(n - 1) // 2], srt[n // 2]
        aggregate = lo.clone() if n % 2 == 1 else lo * 0.5 + hi * 0.5
        return aggregate, _kept_share(x, lo, hi)


class TrimmedMeanParams(DefenseParams):
    beta: float | None = Field(
        None, ge=0.0, lt=0.5,
        description="fraction of values trimmed at each end of every coordinate "
                    "(default: the assumed malicious fraction f/n of the round)")


@DEFENSES.register("trimmed_mean")
class TrimmedMean(_CoordinateBase):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the
    b = ⌊βn⌋ largest and b smallest values and average the rest (b = f by default).
    No per-client decision (flagged = None, except non-finite rows)."""

    Params: ClassVar[type[TrimmedMeanParams]] = TrimmedMeanParams

    def trim_count(self, n: int, f: int) -> int:
        beta = self.params.beta
        return f if beta is None else int(math.floor(beta * n + 1e-9))

    def requirement(self, n: int, f: int) -> str | None:
        b = self.trim_count(n, f)
        if 2 * b >= n:
            return (f"trimmed_mean trims b={b} values at each end, which needs n > 2b; "
                    f"got n={n}")
        return None

    def _aggregate_rows(self, x: torch.Tensor, ctx: RoundContext
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        n, removed = x.shape[0], ctx.dropped
        # b for the full round, less the rows already removed (they are among the assumed
        # attackers), clamped so that at least one value per coordinate stays.
        b = self.trim_count(n + removed, int(ctx.f) + removed) - removed
        b = min(max(b, 0), (n - 1) // 2)
        srt = sort_columns(x)
        aggregate = trimmed_mean_of_sorted(srt, b)
        if b == 0:
            return aggregate, normalized_weights(torch.ones(n, dtype=torch.float64,
                                                            device=x.device))
        return aggregate, _kept_share(x, srt[b], srt[n - b - 1])
