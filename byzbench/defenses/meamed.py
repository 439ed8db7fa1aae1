"""Mean around median (MeaMed): per coordinate, the mean of the values closest to the median."""

from __future__ import annotations

from typing import ClassVar

import torch

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import closest_to_median
from byzbench.registry import DEFENSES


class MeamedParams(DefenseParams):
    pass


@DEFENSES.register("meamed")
class Meamed(Defense):
    """Mean around median (Xie, Koyejo & Gupta 2018, as in ByzFL's MeaMed): per coordinate,
    average the n − f values closest to the coordinate-wise median (the mean of the two
    middle values for even n). No per-client decision (flagged = None, except non-finite
    rows); weights are each client's share of the averaged values."""

    Params: ClassVar[type[MeamedParams]] = MeamedParams
    paper: ClassVar[str] = ("Xie, Koyejo & Gupta, Generalized Byzantine-tolerant SGD, "
                            "arXiv:1802.10116, 2018")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every plaintext update (per-coordinate order statistics)")
    stateless: ClassVar[bool] = True

    def requirement(self, n: int, f: int) -> str | None:
        if f >= n:
            return f"meamed averages n − f values per coordinate, which needs n > f; got n={n}, f={f}"
        return None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n, d = updates.shape
        k = n - min(max(int(ctx.f), 0), n - 1)
        aggregate, counts = closest_to_median(
            updates, torch.arange(n, device=updates.device), k)
        counts = counts.to(torch.float64)
        weights = (counts / counts.sum()).to(updates.dtype) if d > 0 else counts.to(
            updates.dtype)
        return Verdict(aggregate=aggregate, weights=weights, flagged=None)
