"""Pre-aggregation layers: nearest-neighbour mixing, bucketing, adaptive robust clipping.

Each is a registered defense that transforms the round's rows before a robust rule sees them
(``nnm+krum``, ``bucketing+centered_clipping``, ``arc+trimmed_mean``), and that can also run
alone (it then averages what it would pass on).

- ``nnm`` and ``bucketing`` *mix* rows: they pass on ``m`` group rows ``P = M X`` with
  ``mixing`` ``M`` [m, n] (each row of ``M`` sums to 1), so a pipeline maps the later layers'
  flags and weights back to clients (:mod:`.pipeline`). Their verdict's ``weights`` are the
  incoming weights each input row carries into its groups (a group's weight is ``M w``);
  alone, the aggregate is the mean of the group rows weighted by ``normalise(M w)`` (the plain
  mean of the groups for uniform ``w``), and the diagnostic ``share`` holds each row's
  effective weight in it, ``Mᵀ normalise(M w)``.
- ``arc`` passes clipped rows on (``passed``), one per client, like ``norm_clip``.

Everything is a few matrix operations on the ``[n, d]`` matrix and one ``[n, n]`` distance
matrix (:func:`~byzbench.defenses.geometry.pairwise_sq_distances`): no loop over clients or
coordinates.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.clipping import clip_rows
from byzbench.defenses.geometry import (
    mean_of,
    normalized_weights,
    pairwise_sq_distances,
    row_norms,
)
from byzbench.registry import DEFENSES

NNM_PAPER = ("Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, Fixing by Mixing: A "
             "Recipe for Optimal Byzantine ML under Heterogeneity, AISTATS 2023")
BUCKETING_PAPER = ("Karimireddy, He & Jaggi, Byzantine-Robust Learning on Heterogeneous "
                   "Datasets via Bucketing, ICLR 2022")
ARC_PAPER = ("Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan, The Vital Role of Gradient "
             "Clipping in Byzantine-Resilient Distributed Learning, NeurIPS 2024")


def mixed_verdict(updates: torch.Tensor, mixing: torch.Tensor, ctx: RoundContext,
                  diagnostics: dict | None = None) -> Verdict:
    """The verdict of a layer that passes ``mixing @ updates`` on (``mixing`` [m, n] float64,
    rows summing to 1): the incoming weights as ``weights``; alone, the group rows averaged
    with weights ``normalise(mixing @ w)``; per-row effective weights as ``share``."""
    w = normalized_weights(ctx.weights.to(updates.device, torch.float64))
    passed = mixing.to(updates.dtype) @ updates
    groups = normalized_weights(mixing @ w)
    share = mixing.T @ groups                       # each input row's weight in the aggregate
    return Verdict(aggregate=mean_of(passed, groups), weights=w.to(updates.dtype),
                   flagged=None, passed=passed, mixing=mixing,
                   diagnostics={"share": share, **(diagnostics or {})})


# ---------------------------------------------------------------------------------- NNM

class NnmParams(DefenseParams):
    pass


@DEFENSES.register("nnm")
class NearestNeighborMixing(Defense):
    """Nearest-neighbour mixing (Allouah et al., Fixing by Mixing, AISTATS 2023): each
    update x_i is replaced by the mean of its n − f nearest updates in Euclidean distance,
    itself included; as a layer it passes the n mixed rows on (mixing [n, n]), alone it
    averages them. No per-client decision (flagged = None, except non-finite rows)."""

    Params: ClassVar[type[NnmParams]] = NnmParams
    paper: ClassVar[str] = NNM_PAPER
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every plaintext update (pairwise distances)")
    stateless: ClassVar[bool] = True
    mixes_rows: ClassVar[bool] = True

    def requirement(self, n: int, f: int) -> str | None:
        if f >= n:
            return f"nnm averages the n − f nearest rows, which needs n > f; got n={n}, f={f}"
        return None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        k = n - min(max(int(ctx.f), 0), n - 1)
        dist = pairwise_sq_distances(updates)
        # a row is its own nearest neighbour, even when another row is identical to it
        dist.fill_diagonal_(-1.0)
        nearest = torch.topk(dist, k, dim=1, largest=False).indices        # [n, k]
        mixing = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
        mixing.scatter_(1, nearest, 1.0 / k)
        return mixed_verdict(updates, mixing, ctx, {"neighbours": k})


# ----------------------------------------------------------------------------- bucketing

class BucketingParams(DefenseParams):
    bucket_size: int = Field(
        2, ge=1, le=100_000,
        description="s: rows per bucket after a seeded random permutation; ⌈n/s⌉ buckets, "
                    "the last one holds the n mod s remaining rows when s does not divide n")


@DEFENSES.register("bucketing")
class Bucketing(Defense):
    """Bucketing (Karimireddy, He & Jaggi, ICLR 2022): permute the n updates at random
    (the round's seeded generator), cut them into ⌈n/s⌉ buckets of s consecutive rows (the
    last bucket smaller when s does not divide n, averaged over its own size, as in the
    authors' code), and pass the bucket means on (mixing [⌈n/s⌉, n]); alone, the mean of the
    bucket means. No per-client decision (flagged = None, except non-finite rows)."""

    Params: ClassVar[type[BucketingParams]] = BucketingParams
    paper: ClassVar[str] = BUCKETING_PAPER
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="the server sees each bucket's mean in the clear; with s = 2 that reveals much "
             "of each update (a secure sum per bucket is not implemented)")
    stateless: ClassVar[bool] = True
    mixes_rows: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        s = int(self.params.bucket_size)
        m = -(-n // s)
        g = ctx.generator
        perm = torch.randperm(n, generator=g, device=g.device).to(updates.device)
        bucket = torch.empty(n, dtype=torch.long, device=updates.device)
        bucket[perm] = torch.arange(n, device=updates.device) // s     # row perm[p] → p // s
        mixing = torch.zeros(m, n, dtype=torch.float64, device=updates.device)
        mixing[bucket, torch.arange(n, device=updates.device)] = 1.0
        mixing = mixing / mixing.sum(dim=1, keepdim=True)
        return mixed_verdict(updates, mixing, ctx,
                             {"bucket": bucket.to(torch.float64), "buckets": m})


# ----------------------------------------------------------------------------------- ARC

class ArcParams(DefenseParams):
    pass


def arc_clipped_count(n: int, f: int) -> int:
    """k = ⌊2 (f/n) (n − f)⌋, the number of largest updates ARC clips (exact integer floor,
    as ByzFL's ``int((2f/n)(n − f))`` for these non-negative values)."""
    if n <= 0:
        return 0
    f = min(max(f, 0), n)
    return (2 * f * (n - f)) // n


@DEFENSES.register("arc")
class AdaptiveRobustClipping(Defense):
    """Adaptive robust clipping (Allouah et al., NeurIPS 2024): with k = ⌊2(f/n)(n − f)⌋,
    clip the k updates of largest L2 norm to the norm of the (k+1)-th largest,
    Δ_i ← Δ_i · min(1, τ/‖Δ_i‖); as a layer it passes the clipped rows on, alone it
    averages them. No per-client decision (flagged = None, except non-finite rows)."""

    Params: ClassVar[type[ArcParams]] = ArcParams
    paper: ClassVar[str] = ARC_PAPER
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every update's norm (the bound is an order statistic of the norms)")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n = updates.shape[0]
        k = min(arc_clipped_count(n, int(ctx.f)), n - 1)
        norms = row_norms(updates)
        bound = float(torch.sort(norms, descending=True).values[k])   # (k+1)-th largest
        # clipping every row to the bound clips exactly the rows above it: the k largest
        # (rows tied with the bound are unchanged either way)
        clipped = clip_rows(updates, norms, bound)
        w = normalized_weights(ctx.weights.to(updates.device, updates.dtype))
        return Verdict(aggregate=mean_of(clipped, w), weights=w, flagged=None,
                       passed=clipped, diagnostics={"bound": bound, "clipped": k})
