"""Divide-and-Conquer (DnC): spectral outlier scores on random coordinate subsets."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import gram
from byzbench.registry import DEFENSES


class DnCParams(DefenseParams):
    subsample_dim: int = Field(
        10_000, ge=1, le=100_000_000,
        description="b: coordinates sampled per iteration (all of them when b ≥ d)")
    niters: int = Field(1, ge=1, le=100, description="iterations, each on a fresh subset")
    filter_frac: float = Field(
        1.0, ge=0.0, le=10.0, description="c: each iteration removes the ⌊c·f⌋ highest scores")
    combine: Literal["intersection", "union"] = Field(
        "intersection",
        description="good set across iterations: kept by every iteration (the paper) or by "
                    "any")


def outlier_scores(x: torch.Tensor) -> torch.Tensor:
    """[m] float64 DnC scores ⟨x_i − μ, v⟩² with μ the mean row and v the top right singular
    vector of the centred matrix, computed as λ₁·u_i² from the top eigenpair (λ₁, u) of the
    [m, m] Gram matrix of the centred rows (the same quantity, cheaper than an SVD)."""
    centred = x - x.mean(dim=0, keepdim=True)
    if not bool(torch.isfinite(centred).all()):
        # rows near float32's maximum (±1e38, 3e38): their sum overflows the input dtype, so
        # the mean and the centred rows are formed in float64 (exact range: |x − μ| ≤ 2·max)
        x64 = x.to(torch.float64)
        centred = x64 - x64.mean(dim=0, keepdim=True)
    g = gram(centred)                                        # float64, overflow-safe
    g = torch.nan_to_num(g, nan=0.0, posinf=torch.finfo(torch.float64).max)
    eigvals, eigvecs = torch.linalg.eigh(g)
    return eigvals[-1].clamp(min=0.0) * eigvecs[:, -1] ** 2


@DEFENSES.register("dnc")
class DnC(Defense):
    """Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): on a random subset of b
    coordinates, centre the updates, score each by its squared projection on the top
    singular vector, and drop the ⌊c·f⌋ highest; repeat niters times, average the updates
    kept by every iteration. Flags the rest."""

    Params: ClassVar[type[DnCParams]] = DnCParams
    paper: ClassVar[str] = ("Shejwalkar & Houmansadr, Manipulating the Byzantine: Optimizing "
                            "Model Poisoning Attacks and Defenses for Federated Learning, "
                            "NDSS 2021")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="spectral analysis of the plaintext updates")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: DnCParams = self.params
        x = updates
        m, d = x.shape
        device = x.device
        f = int(ctx.f)
        remove = min(int(p.filter_frac * f), m - 1)
        good = torch.ones(m, dtype=torch.bool, device=device)
        if remove > 0:
            if p.combine == "union":
                good = torch.zeros_like(good)
            g = ctx.generator
            for _ in range(p.niters):
                if p.subsample_dim >= d:
                    sub = x
                else:
                    cols = torch.randperm(d, generator=g, device=g.device)[:p.subsample_dim]
                    sub = x[:, cols.to(device)]
                scores = outlier_scores(sub)
                kept = torch.zeros(m, dtype=torch.bool, device=device)
                kept[torch.argsort(scores, stable=True)[:m - remove]] = True
                good = good & kept if p.combine == "intersection" else good | kept
            if not bool(good.any()):  # intersection emptied by many iterations: keep the last
                good = kept
        w = good.to(updates.dtype) / int(good.sum())
        aggregate = w[good] @ x[good]
        return Verdict(aggregate=aggregate, weights=w, flagged=~good)
