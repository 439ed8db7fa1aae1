"""Federated averaging: the undefended baseline."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.registry import DEFENSES


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

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        weights = ctx.weights.to(updates.device, updates.dtype)
        top = weights.max()
        # uniform weights become exactly 1, so sample weights are used unrounded
        weights = weights / top if bool(top > 0) else torch.ones_like(weights)
        if self.params.weighting == "samples":
            weights = weights * ctx.num_samples.to(updates.device, updates.dtype)
        weights = weights / weights.sum()
        return Verdict(aggregate=weights @ updates, weights=weights, flagged=None)
