"""Centered clipping: iteratively clip the updates around a centre carried across rounds."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field

from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Privacy,
    RoundContext,
    SecureView,
    Verdict,
)
from byzbench.defenses.geometry import (
    coordinate_median,
    distances_to,
    normalized_weights,
    row_norms,
)
from byzbench.registry import DEFENSES

if TYPE_CHECKING:
    from byzbench.privacy.secagg import Channel


class CenteredClippingParams(DefenseParams):
    tau: float = Field(10.0, gt=0.0, description="clipping radius τ around the centre")
    iters: int = Field(1, ge=1, le=1000, description="clipping iterations L per round")
    center: Literal["previous", "median"] = Field(
        "previous",
        description="starting centre v₀: the previous round's aggregate (the paper's momentum; "
                    "zero in the first round), or this round's coordinate-wise median "
                    "(stateless)")


@DEFENSES.register("centered_clipping")
class CenteredClipping(Defense):
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021): starting from the previous
    aggregate v, repeat L times v ← v + (1/m) Σ_i (x_i − v)·min(1, τ/‖x_i − v‖) over the
    m finite updates. No per-client decision (``flagged`` is ``None``, except non-finite
    rows, which are excluded and flagged). A round with no finite row leaves the centre as
    it was.

    Under secure aggregation each iteration is one secure sum: the server broadcasts v,
    client i submits (x_i − v)·min(1, τ/‖x_i − v‖)/m, and v ← v + the sum (the paper's
    protocol; the ``median`` centre needs the plaintext updates)."""

    Params: ClassVar[type[CenteredClippingParams]] = CenteredClippingParams
    paper: ClassVar[str] = ("Karimireddy, He & Jaggi, Learning from History for Byzantine "
                            "Robust Optimization, ICML 2021")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=False, needs_server_data=False, keeps_client_state=False,
        note="clients can clip x_i − v themselves against the broadcast centre, so each iteration "
        "is a plain mean (secure aggregation works, one round per extra iteration); keeps "
        "the previous aggregate (not per-client state)")

    secure_view: ClassVar[SecureView] = "protocol"

    def __init__(self, params: CenteredClippingParams | None = None) -> None:
        super().__init__(params)
        self._previous: torch.Tensor | None = None

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        self._previous = None

    def secure_requirement(self) -> str | None:
        if self.params.center == "median":
            return ("secure aggregation: centered_clipping with center 'median' needs the "
                    "plaintext updates (a coordinate-wise median); use center: previous")
        return None

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        p: CenteredClippingParams = self.params
        m, d = channel.n, channel.dim
        device = ctx.num_samples.device
        v = torch.zeros(d, dtype=torch.float64, device=device)
        if self._previous is not None and self._previous.shape == (d,):
            v = self._previous.to(device, torch.float64)
        for _ in range(p.iters):
            def clipped(x: torch.Tensor, v: torch.Tensor = v) -> torch.Tensor:
                diff = x.double() - v.to(x.device)
                scale = (p.tau / row_norms(diff).clamp(min=1e-300)).clamp(max=1.0)
                return diff * (scale / m).unsqueeze(1)

            # |(x_i − v)_j|·scale ≤ min(τ, range + |v_j|)
            bound = min(p.tau, channel.range + float(v.abs().max()) if d else 0.0) / m
            v = v + channel.secure_sum(clipped, bound=max(bound, 1e-300)).to(device)
        self._previous = v.detach().clone()
        weights = torch.full((m,), 1.0 / max(m, 1), dtype=torch.float64, device=device)
        return Verdict(aggregate=v, weights=weights, flagged=None)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: CenteredClippingParams = self.params
        x = updates
        m, d = x.shape
        if p.center == "median":
            v = coordinate_median(x)
        elif self._previous is not None and self._previous.shape == (d,):
            v = self._previous.to(device=updates.device, dtype=updates.dtype)
        else:
            v = updates.new_zeros(d)
        # v_L = a·v₀ + Σ_i w_i x_i, tracked exactly; reported weights are the shares w/Σw
        w = torch.zeros(m, dtype=torch.float64, device=updates.device)
        center = None  # (v₀, squared distances to it): later distances expand on it
        for _ in range(p.iters):
            dist = distances_to(x, v, center)
            if center is None:
                center = (v, dist.square())
            scale = (p.tau / dist.clamp(min=1e-300)).clamp(max=1.0)  # float64
            c = scale.to(x.dtype) / m
            v = v + (c @ x - c.sum() * v)  # = v + Σ c_i (x_i − v), no [m, d] temporary
            w = w * (1.0 - scale.sum() / m) + scale / m
        if p.center == "previous":
            self._previous = v.detach().clone()
        w = normalized_weights(w).to(updates.dtype)
        return Verdict(aggregate=v, weights=w, flagged=None)
