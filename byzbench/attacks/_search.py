"""What defense-aware attacks share: the oracle's damage score, the matrix an attacker
submits to it under each knowledge level, and a bounded line search.

Not an attack module (leading underscore: the package's auto-import skips it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import Field

from byzbench.attacks._common import KnowledgeParams, column_std, malicious_mask, randn
from byzbench.attacks.base import AttackContext


class OracleParams(KnowledgeParams):
    """Defense-aware attacks: the benign estimate (``knowledge``) and the oracle budget."""

    evals: int = Field(
        8, ge=1, le=1000,
        description="at most this many oracle calls (defense evaluations) per active round")


class NoOracleError(RuntimeError):
    """A defense-aware attack ran without the defense oracle (outside the engine)."""


def require_oracle(ctx: AttackContext, attack: str) -> Callable[[torch.Tensor], object]:
    if ctx.oracle is None:
        raise NoOracleError(f"attack {attack!r} is defense-aware: it needs the cell's defense "
                            "oracle (AttackContext.oracle), which the engine provides")
    return ctx.oracle


def hypothetical(updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
    """The ``[n, d]`` matrix the attacker submits to the oracle, before placing its rows.

    Full knowledge: the round's real rows. Partial knowledge: the attacker has not seen
    the honest rows, so each is a surrogate draw N(μ̂, σ̂²) per coordinate, μ̂ and σ̂ the
    mean and standard deviation of its own honestly-computed updates (one draw per
    round from the attack's generator, shared by every oracle call of the round)."""
    if not bool((ctx.reference & ctx.malicious).any()):
        return updates
    own = updates[malicious_mask(ctx, updates.device)]
    honest = ~malicious_mask(ctx, updates.device)
    noise = randn(tuple(updates.shape), ctx.generator, updates)
    mean = own.mean(dim=0)
    surrogate = mean + column_std(own, mean=mean) * noise
    return torch.where(honest.unsqueeze(1), surrogate, updates)


def deviation(verdict: object, benign_mean: torch.Tensor) -> float:
    """The damage a verdict does: ‖aggregate − benign mean‖ (non-finite counts as none,
    since the engine's defense removes non-finite rows and a NaN would win every max)."""
    value = float((verdict.aggregate.to(benign_mean.dtype) - benign_mean).norm())  # type: ignore[attr-defined]
    return value if math.isfinite(value) else -math.inf


def selects_malicious(verdict: object, malicious: torch.Tensor) -> bool:
    """Whether the defense kept a malicious row: positive weight and not flagged."""
    weights = verdict.weights.to(malicious.device)  # type: ignore[attr-defined]
    kept = (weights > 0) & malicious
    flagged = verdict.flagged  # type: ignore[attr-defined]
    if flagged is not None:
        kept &= ~flagged.to(malicious.device).bool()
    return bool(kept.any())


@dataclass
class SearchResult:
    """Where a search ended: the best point, its score, and every point it evaluated."""

    x: float
    score: float
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.points)


def line_maximize(score: Callable[[float], float], start: float, delta: float, evals: int,
                  ratio: float = 0.8, lower: float = -math.inf) -> SearchResult:
    """Best-effort arg-max of ``score`` on [lower, ∞) in at most ``evals`` evaluations.

    The exploration search ByzFL runs for its optimal ALIE/IPM attacks: evaluate ``start``; expand (step doubles) while the score improves;
    then contract, probing alternately above and below the best point with the step
    shrinking by ``ratio``. ``start`` is always evaluated, so the result is never worse
    than it."""
    points: list[tuple[float, float]] = []

    def probe(x: float) -> float:
        y = score(x)
        points.append((x, y))
        return y

    best_x, best_y = start, probe(start)
    prop_x = best_x
    while len(points) < evals:  # expansion
        prop_x = best_x + delta
        prop_y = probe(prop_x)
        if prop_y > best_y:
            best_x, best_y, delta = prop_x, prop_y, delta * 2
        else:
            delta *= ratio
            break
    while len(points) < evals:  # contraction
        if prop_x < best_x:
            prop_x = best_x + delta
        else:
            prop_x = best_x - delta
            if prop_x < lower:
                prop_x = (lower + best_x) / 2
        prop_y = probe(prop_x)
        if prop_y > best_y:
            best_x, best_y = prop_x, prop_y
        delta *= ratio
    return SearchResult(best_x, best_y, points)
