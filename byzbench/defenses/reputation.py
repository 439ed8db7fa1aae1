"""Per-client reputation from agreement with a robust reference, kept across rounds."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Privacy,
    RoundContext,
    Verdict,
)
from byzbench.defenses.geometry import (
    coordinate_median,
    cosine_to,
    finite_rows,
    mean_of,
    normalized_weights,
)
from byzbench.registry import DEFENSES


class ReputationParams(DefenseParams):
    decay: float = Field(0.95, ge=0.0, lt=1.0,
                         description="r ← decay·r + (1 − decay)·score each round a client takes part")
    threshold: float = Field(0.5, ge=0.0, le=1.0,
                             description="clients whose reputation is below this are flagged "
                                         "and excluded (0.5 = orthogonal to the reference)")


class ReputationTable:
    """Reputation per global client id (any int64), vectorised: sorted ids + values."""

    def __init__(self, initial: float = 1.0) -> None:
        self.initial = initial
        self.ids = torch.zeros(0, dtype=torch.long)
        self.values = torch.zeros(0, dtype=torch.float64)

    def get(self, ids: torch.Tensor) -> torch.Tensor:
        """[m] reputations of ``ids`` (``initial`` for ids never seen)."""
        ids = ids.to(self.ids.device, torch.long)
        if self.ids.numel() == 0:
            return torch.full(ids.shape, self.initial, dtype=torch.float64)
        pos = torch.searchsorted(self.ids, ids).clamp_(max=self.ids.numel() - 1)
        found = self.ids[pos] == ids
        return torch.where(found, self.values[pos], torch.full_like(self.values[pos],
                                                                    self.initial))

    def set(self, ids: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``values`` for distinct ``ids``."""
        ids = ids.to(self.ids.device, torch.long)
        values = values.to(self.values.device, torch.float64)
        keep_old = ~torch.isin(self.ids, ids)
        all_ids = torch.cat([self.ids[keep_old], ids])
        all_vals = torch.cat([self.values[keep_old], values])
        order = torch.argsort(all_ids)
        self.ids, self.values = all_ids[order], all_vals[order]


@DEFENSES.register("reputation")
class Reputation(Defense):
    """Reputation weighting (the seed document's layer; cosine trust to a reference as in
    FLTrust, Cao et al. NDSS 2021, accumulated as an exponential moving average):
    score = (1 + cos(Δ_i, coordinate median))/2
    ∈ [0, 1]; r_i ← decay·r_i + (1 − decay)·score, starting at 1, per global client id;
    aggregate = reputation-weighted mean of unflagged clients; flagged = r_i < threshold."""

    Params: ClassVar[type[ReputationParams]] = ReputationParams
    paper: ClassVar[str] = ("the seed document's reputation layer; cosine trust to a reference "
                            "after Cao et al., FLTrust: Byzantine-robust Federated Learning via "
                            "Trust Bootstrapping, NDSS 2021 (here: the coordinate median, "
                            "no server data)")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=True,
        note="needs every plaintext update; keeps a reputation per client id")
    # a client that sends NaN/Inf scores 0 and its reputation falls (the rule sees such rows)
    sees_nonfinite: ClassVar[bool] = True

    def __init__(self, params: ReputationParams | None = None) -> None:
        super().__init__(params)
        self.table = ReputationTable(1.0)

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        self.table = ReputationTable(1.0)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        ok = finite_rows(updates)
        reference = coordinate_median(updates if bool(ok.all()) else updates[ok])
        scores = torch.where(ok, (1.0 + cosine_to(updates, reference)) / 2.0,
                             torch.zeros(ok.shape, dtype=torch.float64, device=updates.device))
        # one reputation per distinct claimed id; rows sharing an id share their mean score
        ids = ctx.client_ids.to(torch.long).cpu()
        uniq, inverse = torch.unique(ids, return_inverse=True)
        mean_score = torch.zeros(uniq.numel(), dtype=torch.float64).scatter_reduce_(
            0, inverse, scores.cpu(), reduce="mean", include_self=False)
        decay = self.params.decay
        new = decay * self.table.get(uniq) + (1.0 - decay) * mean_score
        self.table.set(uniq, new)
        rep = new[inverse].to(updates.device)
        flagged = (rep < self.params.threshold) | ~ok
        w = torch.where(flagged, torch.zeros_like(rep),
                        ctx.weights.to(updates.device, torch.float64) * rep)
        w = normalized_weights(w).to(updates.dtype)
        return Verdict(aggregate=mean_of(updates, w), weights=w, flagged=flagged,
                       diagnostics={"score": scores, "reputation": rep})
