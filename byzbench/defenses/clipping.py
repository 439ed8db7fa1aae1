"""Norm clipping: bound every update's L2 norm (a layer; alone it averages the clipped rows)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import coordinate_median, mean_of, normalized_weights, row_norms
from byzbench.registry import DEFENSES


def clip_rows(updates: torch.Tensor, norms: torch.Tensor, bound: float) -> torch.Tensor:
    """``Δ_i · min(1, bound / ‖Δ_i‖)`` for every row (``norms`` [n] float64, overflow-safe)."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    factor = torch.clamp(bound / safe, max=1.0)
    factor = torch.where(torch.isfinite(factor), factor, torch.zeros_like(factor))
    if bool((factor == 1.0).all()):
        return updates
    return updates * factor.to(updates.dtype)[:, None]


class NormClipParams(DefenseParams):
    max_norm: float | None = Field(
        None, gt=0.0, le=1e12,
        description="clip bound τ on each update's L2 norm (default: the median norm of the "
                    "round's finite updates)")


@DEFENSES.register("norm_clip")
class NormClip(Defense):
    """Norm clipping (Sun, Kairouz, Suresh, McMahan, Can You Really Backdoor Federated
    Learning?, 2019): Δ_i ← Δ_i · min(1, τ / ‖Δ_i‖); as a layer it passes the clipped rows
    on, alone it averages them. No per-client decision (flagged = None, except non-finite
    rows, which are excluded)."""

    Params: ClassVar[type[NormClipParams]] = NormClipParams
    paper: ClassVar[str] = ("Sun, Kairouz, Suresh, McMahan, Can You Really Backdoor Federated "
                            "Learning?, arXiv:1911.07963, 2019")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs each update's norm (clipping can also be done client-side, see the paper)")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        norms = row_norms(updates)
        if self.params.max_norm is not None:
            bound = float(self.params.max_norm)
        else:
            bound = float(coordinate_median(norms[:, None])[0])
        clipped = clip_rows(updates, norms, bound)
        w = normalized_weights(ctx.weights.to(updates.device, updates.dtype))
        return Verdict(aggregate=mean_of(clipped, w), weights=w, flagged=None,
                       passed=clipped, diagnostics={"bound": bound})
