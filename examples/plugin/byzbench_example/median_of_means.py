"""Median of means: a complete byzbench defense in one small module."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict


class MedianOfMeansParams(DefenseParams):
    groups: int = Field(5, ge=1, description="number of groups the clients are split into")


class MedianOfMeans(Defense):
    """Median of means (Chen, Su & Xu, POMACS 2017): split the clients into k random groups,
    average each group, take the coordinate-wise median of the group means."""

    Params: ClassVar[type[MedianOfMeansParams]] = MedianOfMeansParams
    paper: ClassVar[str] = ("Chen, Su & Xu, Distributed Statistical Machine Learning in "
                            "Adversarial Settings, POMACS 2017")
    privacy: ClassVar[Privacy] = Privacy(needs_plaintext_updates=False, needs_server_data=False,
                                         keeps_client_state=False,
                                         note="needs only the k group sums")

    def requirement(self, n: int, f: int) -> str | None:
        if self.params.groups > n:
            return f"median_of_means needs groups ≤ n (groups={self.params.groups}, n={n})"
        return None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        order = torch.randperm(n, generator=ctx.generator, device=ctx.generator.device)
        group = torch.empty(n, dtype=torch.long, device=updates.device)
        group[order.to(updates.device)] = torch.arange(n, device=updates.device) % self.params.groups
        onehot = torch.nn.functional.one_hot(group, self.params.groups).to(updates.dtype)
        # every row is finite here: the base class removed (and flagged) NaN/Inf rows
        means = (onehot.T @ updates) / onehot.sum(dim=0, keepdim=True).T
        aggregate = torch.nanmedian(means, dim=0).values.nan_to_num(0.0)  # a huge group: inf
        weights = torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
        return Verdict(aggregate=aggregate, weights=weights, flagged=None)
