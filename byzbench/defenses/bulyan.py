"""Bulyan: Krum-based selection, then a coordinate-wise trimmed mean around the median."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import coordinate_median, pairwise_sq_distances, sort_columns
from byzbench.registry import DEFENSES


class BulyanParams(DefenseParams):
    selection: Literal["recursive_krum", "multikrum"] = Field(
        "recursive_krum",
        description="recursive_krum: θ = n−2f times pick the Krum winner of the remaining set "
                    "and remove it (El Mhamdi et al.); multikrum: the θ lowest Krum scores of "
                    "one pass (common in later code)")
    coordinate: Literal["closest_to_median", "trimmed_mean"] = Field(
        "closest_to_median",
        description="per coordinate, average the β = θ−2f selected values closest to their "
                    "median (the paper), or drop the f largest and f smallest (trimmed mean)")


def krum_scores(dist: torch.Tensor, available: torch.Tensor, f: int,
                extra: int = 0) -> torch.Tensor:
    """Krum scores within the ``available`` rows: the sum of squared distances to the
    k = r − f − 2 nearest other available rows (Blanchard et al.), r = |available|, with k
    raised to 1 where r − f − 2 < 1 and ``extra`` more neighbours (for tie-breaking);
    ``+inf`` for unavailable rows. ``dist`` is the symmetric float64 [n, n] squared-distance
    matrix."""
    r = int(available.sum())
    k = min(max(r - f - 2, 1) + extra, r - 1)
    scores = torch.full((dist.shape[0],), float("inf"), dtype=dist.dtype, device=dist.device)
    if r == 0:
        return scores
    if k <= 0:  # a single row left
        return torch.where(available, torch.zeros_like(scores), scores)
    masked = dist.masked_fill(~available[None, :], float("inf"))
    masked = masked.masked_fill(torch.eye(len(available), dtype=torch.bool,
                                          device=dist.device), float("inf"))
    near = torch.topk(masked, k, dim=1, largest=False).values.sum(dim=1)
    return torch.where(available, near, scores)


def krum_pick(dist: torch.Tensor, available: torch.Tensor, f: int) -> torch.Tensor:
    """Index of the lowest Krum score among ``available``; a tie (e.g. two mutual nearest
    neighbours when k = 1) goes to the lower score with one more neighbour, so the choice
    does not depend on the order of the rows."""
    scores = krum_scores(dist, available, f)
    tied = scores == scores.min()
    if int(tied.sum()) > 1:
        wider = krum_scores(dist, available, f, extra=1)
        scores = torch.where(tied, wider, torch.full_like(wider, float("inf")))
    return torch.argmin(scores)


BLOCK = 1 << 14  # columns per block of closest_to_median: a [θ, 16384] slice stays in cache


def _topk_closest(s: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], row indices [β, d]) of the β values of each column of ``s`` closest to
    the column's median, by ``topk`` on the distances (the definition)."""
    keep = torch.topk((s - coordinate_median(s)).abs(), beta, dim=0, largest=False).indices
    return torch.gather(s, 0, keep).mean(dim=0), keep


def closest_to_median(x: torch.Tensor, chosen: torch.Tensor, beta: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(aggregate [d], counts [θ]): per coordinate, the mean of the β values of the rows
    ``x[chosen]`` closest to their median, and how many coordinates each chosen row
    contributes to.

    In a sorted column the β values nearest the median are a window of β consecutive
    values, the one whose larger end distance r is smallest; when that set is unique (the
    two values just outside the window lie farther than r) it is exactly the set ``topk``
    of the distances selects, and its members are the rows within r of the median. So each
    block of columns is sorted (numpy, fast along axis 0) and needs no ``topk``; columns
    where a value outside the window ties at distance r (e.g. repeated values) go through
    ``topk`` as the definition states, so ties resolve as before.
    """
    theta, d = len(chosen), x.shape[1]
    if d == 0 or x.device.type != "cpu":
        aggregate, keep = _topk_closest(x[chosen], beta)
        return aggregate, torch.bincount(keep.reshape(-1), minlength=theta)
    aggregate = torch.empty(d, dtype=x.dtype, device=x.device)
    counts = torch.zeros(theta, dtype=torch.int64, device=x.device)
    windows = theta - beta + 1
    offsets = torch.arange(beta, device=x.device)[:, None]
    for start in range(0, d, BLOCK):
        s = x[:, start:start + BLOCK].index_select(0, chosen)     # [θ, w], rows in θ order
        srt = sort_columns(s)
        med = (srt[theta // 2] if theta % 2 else
               srt[theta // 2 - 1] * 0.5 + srt[theta // 2] * 0.5)  # = coordinate_median(s)
        dist = (srt - med).abs()                                  # as topk would see them
        radius, j = torch.maximum(dist[:windows], dist[beta - 1:]).min(dim=0)
        inf = dist.new_full((1, dist.shape[1]), float("inf"))
        padded = torch.cat([inf, dist, inf])                      # neighbours of the window
        outside = torch.minimum(padded.gather(0, j[None]), padded.gather(0, (j + beta + 1)[None]))
        tied = outside[0] <= radius
        aggregate[start:start + s.shape[1]] = srt.gather(0, j[None] + offsets).mean(dim=0)
        member = (s - med).abs() <= radius
        if bool(tied.any()):
            cols = torch.nonzero(tied).squeeze(1)
            member[:, cols] = False
            agg_t, keep = _topk_closest(s[:, cols], beta)
            aggregate[start + cols] = agg_t
            counts += torch.bincount(keep.reshape(-1), minlength=theta)
        counts += member.sum(dim=1)
    return aggregate, counts


@DEFENSES.register("bulyan")
class Bulyan(Defense):
    """Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018): select θ = n−2f updates by
    recursive Krum, then per coordinate average the β = θ−2f selected values closest to the
    coordinate-wise median. Needs n ≥ 4f+3; flags the updates not selected."""

    Params: ClassVar[type[BulyanParams]] = BulyanParams
    paper: ClassVar[str] = ("El Mhamdi, Guerraoui & Rouault, The Hidden Vulnerability of "
                            "Distributed Learning in Byzantium, ICML 2018")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="pairwise distances between plaintext updates")
    stateless: ClassVar[bool] = True

    def requirement(self, n: int, f: int) -> str | None:
        if n < 4 * f + 3:
            return f"bulyan needs n ≥ 4f+3 clients per round (n={n}, f={f})"
        return None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: BulyanParams = self.params
        x = updates
        m, d = x.shape
        device = x.device
        # clamp f to what the m rows support (m ≥ 4f+3)
        f = max(0, min(int(ctx.f), (m - 3) // 4))
        theta = m - 2 * f
        beta = theta - 2 * f

        if theta == m:  # f = 0: every row is selected, the order does not matter
            chosen = torch.arange(m, device=device)
        else:
            dist = pairwise_sq_distances(x)
            dist = 0.5 * (dist + dist.T)               # exactly symmetric: equal pair scores
            available = torch.ones(m, dtype=torch.bool, device=device)
            if p.selection == "multikrum":
                chosen = torch.argsort(krum_scores(dist, available, f), stable=True)[:theta]
            else:
                picks = []
                for _ in range(theta):  # θ sequential Krum picks on the small [m, m] matrix
                    pick = krum_pick(dist, available, f)
                    picks.append(pick)
                    available[pick] = False
                chosen = torch.stack(picks)
        if p.coordinate == "trimmed_mean":
            s = x[chosen]                                        # [θ, d]
            values, order = torch.sort(s, dim=0)
            keep = order[f:theta - f]                            # [β, d] row indices
            aggregate = values[f:theta - f].mean(dim=0)
            counts = torch.bincount(keep.reshape(-1), minlength=theta).to(updates.dtype)
        else:
            aggregate, counts = closest_to_median(x, chosen, beta)
            counts = counts.to(updates.dtype)
        w_sel = counts / float(beta * d) if d > 0 else counts
        weights = torch.zeros(m, dtype=updates.dtype, device=device)
        weights[chosen] = w_sel
        selected = torch.zeros(m, dtype=torch.bool, device=device)
        selected[chosen] = True
        return Verdict(aggregate=aggregate, weights=weights, flagged=~selected)
