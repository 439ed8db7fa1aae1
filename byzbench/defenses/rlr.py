"""Robust learning rate (Ozdayi, Kantarcioglu & Gel, AAAI 2021): a per-coordinate server
learning rate whose sign follows the clients' sign agreement."""

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

# θ as a fraction of the round's n when no threshold is given: the paper's Fashion-MNIST
# setting (θ = 4 with 10 agents, one of them corrupt)
DEFAULT_THRESHOLD_FRACTION = 0.4


class RlrParams(DefenseParams):
    threshold: float | None = Field(
        None, ge=0.0, le=1e9,
        description="θ: a coordinate whose sign agreement |Σ_i sign(Δ_i)| is below θ gets "
                    "learning rate −η instead of η (default 0.4·n, the paper's θ = 4 of 10 "
                    "agents; every setting of the authors' scripts has θ above the corrupt count)")
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="the mean the learning rate multiplies: weighted by local "
                               "sample count (the authors' code), or equal")


def sign_agreement(updates: torch.Tensor) -> torch.Tensor:
    """[d] |Σ_i sign(Δ_i)| (sign(0) = 0, as ``torch.sign``); summed in float32 at least,
    which counts exactly up to 2²⁴ rows."""
    acc = torch.float64 if updates.dtype == torch.float64 else torch.float32
    return torch.sign(updates).sum(dim=0, dtype=acc).abs()


@DEFENSES.register("rlr")
class RobustLearningRate(Defense):
    """Robust learning rate (Ozdayi, Kantarcioglu & Gel, AAAI 2021): per coordinate j, the
    server learning rate is η when the sign agreement |Σ_i sign(Δ_ij)| ≥ θ and −η when it is
    below θ; aggregate = lr ⊙ (weighted mean of the updates), the engine applying η. Flags
    nobody (flagged = None, except non-finite rows); as a layer it passes lr ⊙ Δ_i on.
    Under secure aggregation one secure sum of (w_i Δ_i, sign(Δ_i)) gives both."""

    Params: ClassVar[type[RlrParams]] = RlrParams
    paper: ClassVar[str] = ("Ozdayi, Kantarcioglu & Gel, Defending against Backdoors in "
                            "Federated Learning with Robust Learning Rate, AAAI 2021")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=False, needs_server_data=False, keeps_client_state=False,
        note="needs only two sums, of the updates and of their signs (clients send sign(Δ_i) "
             "too), which secure aggregation can compute")
    stateless: ClassVar[bool] = True
    secure_view: ClassVar[SecureView] = "sum"

    def threshold(self, n: int) -> float:
        """θ for a round of ``n`` rows."""
        if self.params.threshold is not None:
            return float(self.params.threshold)
        return DEFAULT_THRESHOLD_FRACTION * n

    def client_weights(self, ctx: RoundContext, n: int, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
        weights = ctx.weights.to(device, dtype)
        top = weights.max()
        weights = weights / top if bool(top > 0) else torch.ones_like(weights)
        if self.params.weighting == "samples":
            weights = weights * ctx.num_samples.to(device, dtype)
        total = weights.sum()
        return weights / total if bool(total > 0) else torch.full_like(weights, 1.0 / n)

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        n, d = channel.n, channel.dim
        weights = self.client_weights(ctx, n, ctx.num_samples.device, torch.float64)
        total = channel.secure_sum(
            lambda x: torch.cat([weights.to(x.device).unsqueeze(1) * x.double(),
                                 torch.sign(x).double()], dim=1),
            bound=max(channel.range, 1.0))
        theta = self.threshold(n)
        lr = torch.where(total[d:].abs().round() >= theta, 1.0, -1.0).to(total.dtype)
        return Verdict(aggregate=lr * total[:d], weights=weights, flagged=None,
                       diagnostics={"threshold": theta,
                                    "flipped": float((lr < 0).to(torch.float64).mean())
                                    if lr.numel() else 0.0})

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        weights = self.client_weights(ctx, n, updates.device, updates.dtype)
        theta = self.threshold(n)
        agree = sign_agreement(updates)
        lr = torch.where(agree >= theta, 1.0, -1.0).to(updates.dtype)
        return Verdict(aggregate=lr * (weights @ updates), weights=weights, flagged=None,
                       passed=updates * lr,
                       diagnostics={"threshold": theta,
                                    "flipped": float((lr < 0).to(torch.float64).mean())
                                    if lr.numel() else 0.0})
