"""FLTrust: trust scores from the cosine to the server's own update on clean root data."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import cosine_to, row_norms
from byzbench.registry import DEFENSES


class FLTrustParams(DefenseParams):
    root_size: int = Field(
        100, ge=1, le=100_000,
        description="clean training samples the server holds out as its root dataset")


@DEFENSES.register("fltrust")
class FLTrust(Defense):
    """FLTrust (Cao, Fang, Liu & Gong, NDSS 2021): the server trains on its own root dataset
    to get g₀; each update gets trust TS_i = ReLU(cos(g_i, g₀)) and is rescaled to ‖g₀‖;
    the aggregate is Σ TS_i·(‖g₀‖/‖g_i‖)·g_i / Σ TS_i. Flags zero-trust updates."""

    Params: ClassVar[type[FLTrustParams]] = FLTrustParams
    paper: ClassVar[str] = ("Cao, Fang, Liu & Gong, FLTrust: Byzantine-robust Federated "
                            "Learning via Trust Bootstrapping, NDSS 2021")
    stateless: ClassVar[bool] = True
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=True, keeps_client_state=False,
        note="needs root_size clean samples held by the server (taken out of "
        "the training data) and each client's plaintext update")

    def root_data_size(self) -> int:
        return self.params.root_size

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n, d = updates.shape
        device = updates.device
        server_update = self.cell.server_update if self.cell is not None else None
        if server_update is None:
            raise RuntimeError("fltrust needs the server's root-data update: "
                               "DefenseSetup.server_update was not provided (root_size > 0)")
        g0 = server_update(ctx.global_params, ctx.round)
        g0 = g0.to(device=device, dtype=updates.dtype).reshape(-1)
        zero = Verdict(aggregate=updates.new_zeros(d), weights=updates.new_zeros(n),
                       flagged=torch.ones(n, dtype=torch.bool, device=device))
        if not bool(torch.isfinite(g0).all()):
            return zero
        g0_norm = float(row_norms(g0[None, :])[0])
        trust = cosine_to(updates, g0).clamp(min=0.0)          # ReLU(cos)
        total = trust.sum()
        if g0_norm == 0.0 or not bool(total > 0):
            return zero
        keep = trust > 0
        coef = (trust[keep] * (g0_norm / row_norms(updates[keep])) / total).to(updates.dtype)
        aggregate = coef @ updates[keep]                  # Σ TS_i·(‖g₀‖/‖g_i‖)·g_i / Σ TS_i
        w = (trust / total).to(updates.dtype)             # TS_i / Σ TS: each client's share
        return Verdict(aggregate=aggregate, weights=w, flagged=~keep,
                       diagnostics={"trust": trust})
