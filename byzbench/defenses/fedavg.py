"""Federated averaging: the undefended baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    Privacy,
    RoundContext,
    SecureView,
    Verdict,
)
from byzbench.registry import DEFENSES

if TYPE_CHECKING:
    from byzbench.privacy.secagg import Channel


class FedAvgParams(DefenseParams):
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="weight clients by local sample count, or equally")


@DEFENSES.register("fedavg")
class FedAvg(Defense):
    """FedAvg (McMahan et al., AISTATS 2017): Σ w_i Δ_i / Σ w_i with w_i the client's sample
    count (or 1), times the incoming weight inside a pipeline. Flags nobody and propagates
    whatever it is sent, NaN included (``sees_nonfinite``): it is the undefended baseline."""

    Params: ClassVar[type[FedAvgParams]] = FedAvgParams
    paper: ClassVar[str] = ("McMahan et al., Communication-Efficient Learning of Deep Networks "
                            "from Decentralized Data, AISTATS 2017")
    privacy: ClassVar[Privacy] = Privacy(needs_plaintext_updates=False,
                                         needs_server_data=False, keeps_client_state=False,
                                         note="works under secure aggregation")
    stateless: ClassVar[bool] = True
    sees_nonfinite: ClassVar[bool] = True
    secure_view: ClassVar[SecureView] = "sum"

    def client_weights(self, ctx: RoundContext, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
        """[n] the normalized weights w_i (incoming weight × sample count, or uniform)."""
        weights = ctx.weights.to(device, dtype)
        top = weights.max()
        # uniform weights become exactly 1, so sample weights are used unrounded
        weights = weights / top if bool(top > 0) else torch.ones_like(weights)
        if self.params.weighting == "samples":
            weights = weights * ctx.num_samples.to(device, dtype)
        return weights / weights.sum()

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        weights = self.client_weights(ctx, updates.device, updates.dtype)
        return Verdict(aggregate=weights @ updates, weights=weights, flagged=None)

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        """One secure sum: the server tells client i its weight w_i, the client submits
        w_i·Δ_i (each within [-range, range], as Σ w_i = 1)."""
        weights = self.client_weights(ctx, ctx.num_samples.device, torch.float64)
        total = channel.secure_sum(lambda x: weights.to(x.device).unsqueeze(1) * x.double(),
                                   bound=channel.range)
        return Verdict(aggregate=total, weights=weights, flagged=None)
