"""Geometric median by the smoothed Weiszfeld algorithm (RFA)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import coordinate_median, distances_to
from byzbench.registry import DEFENSES


class GeoMedParams(DefenseParams):
    nu: float = Field(
        1e-6, gt=0.0, le=1.0,
        description="smoothing ν of Weiszfeld's weights: β_i = α_i / max(ν, ‖v − x_i‖)")
    iters: int = Field(
        5, ge=1, le=1000, description="smoothed Weiszfeld iterations after the starting point")
    init: Literal["median", "mean"] = Field(
        "median",
        description="starting point: coordinate-wise median of the finite rows (robust: a huge "
                    "row cannot drag the first iterates) or the α-weighted mean (RFA's code)")
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="α_i ∝ the client's local sample count (RFA), or equal")


@DEFENSES.register("geomed")
class GeoMed(Defense):
    """RFA (Pillutla, Kakade & Harchaoui, IEEE TSP 2022): the α-weighted geometric median
    argmin_v Σ α_i ‖v − x_i‖, approximated by smoothed Weiszfeld iterations
    v ← Σ β_i x_i / Σ β_i with β_i = α_i / max(ν, ‖v − x_i‖). No per-client decision
    (``flagged`` is ``None``, except non-finite rows, which are excluded and flagged)."""

    Params: ClassVar[type[GeoMedParams]] = GeoMedParams
    paper: ClassVar[str] = ("Pillutla, Kakade & Harchaoui, Robust Aggregation for Federated "
                            "Learning, IEEE Transactions on Signal Processing 2022")
    stateless: ClassVar[bool] = True
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=False, needs_server_data=False, keeps_client_state=False,
        note="each Weiszfeld step is a weighted mean whose weights clients compute from the "
        "broadcast estimate, so secure aggregation can run it (one extra round per "
        "iteration)")

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: GeoMedParams = self.params
        x = updates
        alpha = ctx.weights.to(x.device, torch.float64)
        alpha = alpha / alpha.max()  # uniform incoming weights become exactly 1
        if p.weighting == "samples":
            samples = ctx.num_samples.to(x.device, torch.float64).clamp(min=0)
            alpha = alpha * torch.nan_to_num(samples, nan=0.0, posinf=0.0)
        if not bool(alpha.sum() > 0):
            alpha = torch.ones_like(alpha)
        alpha = alpha / alpha.sum()

        v = coordinate_median(x) if p.init == "median" else alpha.to(x.dtype) @ x
        w = alpha
        center = None  # (start point, squared distances to it): later distances expand on it
        for _ in range(p.iters):
            dist = distances_to(x, v, center)         # float64, overflow-safe
            if center is None:
                center = (v, dist.square())
            beta = alpha / dist.clamp(min=p.nu)
            w = beta / beta.sum()
            v = w.to(x.dtype) @ x
        return Verdict(aggregate=v, weights=w.to(x.dtype), flagged=None)
