"""Bulyan: Krum-based selection, then a coordinate-wise trimmed mean around the median."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import closest_to_median, pairwise_sq_distances
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
