"""Attacks on the secure-aggregation protocols themselves: what a malicious client can do
with the quantities it computes (see :mod:`byzbench.privacy.secagg`'s threat model)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.attacks.base import AttackContext
from byzbench.attacks.model import SignFlip, SignFlipParams
from byzbench.registry import ATTACKS


class InflateParams(SignFlipParams):
    inflate: float = Field(
        10.0, ge=0.0, le=1e9,
        description="each quantity a secure-aggregation protocol asks a malicious client for "
                    "is multiplied by this (then clipped to the sum's bound by the ring)")


@ATTACKS.register("secagg_inflate")
class SecAggInflate(SignFlip):
    """Sign flipping with a protocol deviation (Li et al., AAAI 2019, RSA, for the flip):
    each malicious client sends −Δ_i and, under secure aggregation, multiplies every
    quantity the defense's protocol asks it for by ``inflate`` instead of computing it
    honestly — it claims a larger weight w_i (FedAvg), a larger Weiszfeld weight β_i (RFA's
    protocol), or skips centered clipping's clip (×inflate of the clipped difference), up
    to the ring's bound. Without secure aggregation it is a plain sign flip."""

    Params: ClassVar[type[InflateParams]] = InflateParams

    def secure_quantities(self, step: int, quantities: torch.Tensor, ctx: AttackContext
                          ) -> torch.Tensor | None:
        return quantities * self.params.inflate
