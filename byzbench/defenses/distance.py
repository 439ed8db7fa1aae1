"""Distance-based selection rules: Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

Both score every update by the sum of squared Euclidean distances to its ``n − f − 2``
nearest neighbours, computed from one ``[n, n]`` distance matrix that a single matrix
product gives (:func:`byzbench.defenses.geometry.pairwise_sq_distances`).

The base class removes non-finite rows first; each counts against the assumed budget
(``f' = max(f − k, 0)`` for ``k`` non-finite rows: a row of NaN is Byzantine by definition),
so the neighbour count ``n' − f' − 2`` and Multi-Krum's default ``m = n' − f'`` stay those of
the full round. ``f'`` is clamped to what the round supports (``n' > 2f' + 2``) when client
sampling gives a round more assumed attackers than Krum tolerates.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import mean_of, pairwise_sq_distances
from byzbench.registry import DEFENSES

KRUM_PAPER = ("Blanchard, El Mhamdi, Guerraoui, Stainer, Machine Learning with Adversaries: "
              "Byzantine Tolerant Gradient Descent, NeurIPS 2017")


def krum_scores(sq_dist: torch.Tensor, f: int) -> torch.Tensor:
    """[n] Krum scores: each row's sum of squared distances to its ``n − f − 2`` nearest
    other rows (Blanchard et al. 2017). The neighbour count is clamped to ``[1, n − 1]``."""
    n = sq_dist.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=sq_dist.dtype, device=sq_dist.device)
    k = min(max(n - f - 2, 1), n - 1)
    d = sq_dist.clone()
    d.fill_diagonal_(float("inf"))
    return torch.topk(d, k, dim=1, largest=False).values.sum(dim=1)


def krum_f(f: int, n: int) -> int:
    """The assumed count Krum uses on ``n`` rows: ``f`` clamped to ``n > 2f + 2``."""
    return min(max(f, 0), max((n - 3) // 2, 0))


def _krum_requirement(name: str, n: int, f: int) -> str | None:
    if n <= 2 * f + 2:
        return (f"{name} needs n > 2f + 2 clients per round (Blanchard et al. 2017); "
                f"got n={n}, f={f}")
    return None


class KrumParams(DefenseParams):
    pass


class MultiKrumParams(DefenseParams):
    m: int | None = Field(
        None, ge=1, le=100_000,
        description="updates averaged, those with the m lowest Krum scores (default n − f)")


class _KrumBase(Defense):
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every plaintext update (pairwise distances)")
    paper: ClassVar[str] = KRUM_PAPER
    stateless: ClassVar[bool] = True

    def _select(self, n: int, f: int) -> int:
        raise NotImplementedError

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        f = krum_f(int(ctx.f), n)
        scores = krum_scores(pairwise_sq_distances(updates), f)
        m = self._select(n, f)
        chosen = torch.argsort(scores, stable=True)[:m]
        selected = torch.zeros(n, dtype=torch.bool, device=updates.device)
        selected[chosen] = True
        w_in = ctx.weights.to(updates.device, updates.dtype)
        w_out = torch.where(selected, w_in, torch.zeros_like(w_in))
        if not bool(w_out.sum() > 0):  # incoming weights all zero on the chosen rows
            w_out = selected.to(updates.dtype)
        w_out = w_out / w_out.sum()
        return Verdict(aggregate=mean_of(updates, w_out), weights=w_out, flagged=~selected,
                       diagnostics={"scores": scores})


@DEFENSES.register("krum")
class Krum(_KrumBase):
    """Krum (Blanchard et al., NeurIPS 2017): score each update by the sum of squared
    distances to its n − f − 2 nearest neighbours and apply the lowest-scoring one;
    every other client is flagged. Needs n > 2f + 2."""

    Params: ClassVar[type[KrumParams]] = KrumParams

    def requirement(self, n: int, f: int) -> str | None:
        return _krum_requirement("krum", n, f)

    def _select(self, n: int, f: int) -> int:
        return 1


@DEFENSES.register("multikrum")
class MultiKrum(_KrumBase):
    """Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018): average the
    m updates with the lowest Krum scores (m = n − f by default); the rest are flagged."""

    Params: ClassVar[type[MultiKrumParams]] = MultiKrumParams

    def requirement(self, n: int, f: int) -> str | None:
        reason = _krum_requirement("multikrum", n, f)
        if reason is None and self.params.m is not None and self.params.m > n:
            reason = f"multikrum averages m={self.params.m} updates but only n={n} take part"
        return reason

    def _select(self, n: int, f: int) -> int:
        m = self.params.m if self.params.m is not None else n - f
        return min(max(m, 1), n)
