"""FoolsGold: down-weight clients whose update histories are too similar (sybils)."""

from __future__ import annotations

from typing import ClassVar, Literal

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
    finite_rows,
    normalized_weights,
    pairwise_cosine,
    scatter_rows,
)
from byzbench.registry import DEFENSES


class FoolsGoldParams(DefenseParams):
    kappa: float = Field(1.0, gt=0.0, le=100.0,
                         description="confidence κ of the logit: α ← κ(ln(α/(1−α)) + 0.5)")
    reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="mean: Σ α_i Δ_i / Σ α_i; sum: Σ α_i Δ_i as in the paper's update rule "
                    "(n times larger steps when everyone is trusted)")


def foolsgold_weights(history: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """[n] FoolsGold learning-rate weights α ∈ [0, 1] from the [n, d] per-client histories.

    cs = cosine similarities with the diagonal zeroed; v_i = max_j cs_ij; pardoning
    cs_ij ← cs_ij·v_i/v_j where v_i < v_j; α_i = 1 − max_j cs_ij clipped to [0, 1], divided
    by max α (1 → 0.99), then α ← κ(ln(α/(1−α)) + 0.5) clipped to [0, 1]. When every α
    is 0 (each history parallel to another), all weights are 1: no client stands out.
    """
    n = history.shape[0]
    cs = pairwise_cosine(history)                       # float64
    cs.fill_diagonal_(0.0)
    vmax = cs.max(dim=1).values                         # ≥ 0 (the zeroed diagonal)
    lower = vmax[:, None] < vmax[None, :]
    ratio = vmax[:, None] / torch.where(lower, vmax[None, :], torch.ones_like(cs))
    cs = torch.where(lower, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max() if n > 0 else alpha.new_zeros(())
    if not bool(top > 0):
        # every history is parallel to another's: nothing tells a sybil from an honest
        # client, so everyone is weighted equally (zeroing everyone would stop training)
        return torch.ones_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, 0.99), alpha)
    logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    logit = torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0)
    return logit.clamp(0.0, 1.0)


@DEFENSES.register("foolsgold")
class FoolsGold(Defense):
    """FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020): keep each client's sum of past
    updates (keyed by client id), compare the histories by cosine similarity, pardon the
    less similar of each pair, and weight each client by a logit of 1 − its maximum
    similarity, so sybils that push the same direction get weight ~0. Flags weight-0
    clients."""

    Params: ClassVar[type[FoolsGoldParams]] = FoolsGoldParams
    paper: ClassVar[str] = ("Fung, Yoon & Beschastnikh, The Limitations of Federated Learning "
                            "in Sybil Settings, RAID 2020")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=True,
        note="stores every client's running sum of plaintext updates "
        "(a [clients, d] matrix), keyed by client id")

    def __init__(self, params: FoolsGoldParams | None = None) -> None:
        super().__init__(params)
        self._history: torch.Tensor | None = None
        self._capacity = 0

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        self._history = None                      # allocated on first use: [clients, d]
        self._capacity = setup.num_clients

    def _rows(self, ids: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        """Add this round's updates to the per-client sums (row = client id) and return
        the [k, d] sums of these clients."""
        d = updates.shape[1]
        need = int(ids.max()) + 1 if ids.numel() else 0
        h = self._history
        if h is None or h.shape[1] != d or h.device != updates.device or h.dtype != updates.dtype:
            h = torch.zeros(max(self._capacity, need), d, dtype=updates.dtype,
                            device=updates.device)
        if h.shape[0] < need:
            h = torch.cat([h, h.new_zeros(need - h.shape[0], d)])
        h.index_add_(0, ids, updates)
        self._history = h
        return h[ids]

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: FoolsGoldParams = self.params
        n, d = updates.shape
        device = updates.device
        ids = ctx.client_ids.to(device=device, dtype=torch.long)
        usable = ids >= 0                     # rows that stand for one client (not a group)
        idx = torch.nonzero(usable).squeeze(1)
        if idx.numel() == 0:
            return Verdict(aggregate=updates.new_zeros(d), weights=updates.new_zeros(n),
                           flagged=torch.ones(n, dtype=torch.bool, device=device))
        x = updates if idx.numel() == n else updates[idx]   # no copy when all finite
        history = self._rows(ids[idx], x)
        alpha = torch.zeros(idx.numel(), dtype=torch.float64, device=device)
        ok = finite_rows(history)             # a history may overflow: that client is out
        if bool(ok.any()):
            alpha[ok] = foolsgold_weights(history[ok], p.kappa)
        keep = alpha > 0
        coef = alpha / alpha.sum() if p.reduction == "mean" and bool(keep.any()) else alpha
        coef = coef.to(updates.dtype)
        aggregate = coef[keep] @ x[keep] if bool(keep.any()) else updates.new_zeros(d)
        w = normalized_weights(alpha).to(updates.dtype)                 # each client's share
        return Verdict(aggregate=aggregate, weights=scatter_rows(w, idx, n),
                       flagged=scatter_rows(~keep, idx, n, fill=True))
