"""Clipped clustering: norm clipping, then agglomerative clustering on cosine distance."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Privacy,
    RoundContext,
    Verdict,
)
from byzbench.defenses.geometry import pairwise_cosine, row_norms
from byzbench.defenses.sklearn_calls import lean_sklearn
from byzbench.registry import DEFENSES


class ClippedClusteringParams(DefenseParams):
    linkage: Literal["average", "complete", "single"] = Field(
        "average", description="linkage of the agglomerative clustering (2 clusters)")
    norm_history: bool = Field(
        True,
        description="clip to the median of every update norm seen so far in the cell (Li et "
                    "al.'s implementation); false: the median norm of this round only")
    max_tau: float = Field(1e5, gt=0.0, description="upper bound on the clipping threshold")


def largest_cluster(labels: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """[m] bool: members of the largest cluster (label ≥ 0). Ties go to the cluster with the
    smaller mean within-cluster distance, then the smaller label — never to row order."""
    valid = labels[labels >= 0]
    if valid.size == 0:
        return np.ones(labels.shape[0], dtype=bool)
    names, counts = np.unique(valid, return_counts=True)
    best = names[counts == counts.max()]
    if best.size > 1:
        spread = [dist[np.ix_(labels == c, labels == c)].mean() for c in best]
        best = best[np.argmin(spread)]
    else:
        best = best[0]
    return labels == best


@DEFENSES.register("clipped_clustering")
class ClippedClustering(Defense):
    """Clipped clustering (Li, Ngai & Voigt, IEEE Trans. Big Data 2023): clip every update to
    the median norm, split the updates into two clusters by agglomerative clustering on
    pairwise cosine distance, and average the larger cluster; flags the other."""

    Params: ClassVar[type[ClippedClusteringParams]] = ClippedClusteringParams
    paper: ClassVar[str] = ("Li, Ngai & Voigt, An Experimental Study of Byzantine-Robust "
                            "Aggregation Schemes in Federated Learning, IEEE Transactions on "
                            "Big Data 2023")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="pairwise cosine between plaintext updates; keeps the history of "
        "update norms (not per client)")
    lazy_imports: ClassVar[tuple[str, ...]] = ("sklearn.cluster",)

    def __init__(self, params: ClippedClusteringParams | None = None) -> None:
        super().__init__(params)
        self._norms = np.zeros(0)   # every norm seen, in order (one array: cheap to copy)

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        self._norms = np.zeros(0)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        from sklearn.cluster import AgglomerativeClustering  # ~0.5 s: see lazy_imports

        p: ClippedClusteringParams = self.params
        x = updates
        m = x.shape[0]
        device = x.device
        norms = row_norms(x)                                         # float64 [m]
        if p.norm_history:
            self._norms = np.concatenate([self._norms, norms.cpu().numpy()])
            tau = np.median(self._norms)
        else:
            tau = torch.quantile(norms, 0.5)
        tau = min(float(tau), p.max_tau)
        scale = torch.where(norms > tau, tau / norms.clamp(min=1e-300),
                            torch.ones_like(norms))

        if m >= 3:
            cos = pairwise_cosine(x)
            dist = (1.0 - 0.5 * (cos + cos.T)).clamp(0.0, 2.0).cpu().numpy()
            np.fill_diagonal(dist, 0.0)
            with lean_sklearn():
                labels = AgglomerativeClustering(n_clusters=2, metric="precomputed",
                                                 linkage=p.linkage).fit_predict(dist)
            keep = torch.from_numpy(largest_cluster(labels, dist)).to(device)
        else:  # one or two rows: no majority to find
            keep = torch.ones(m, dtype=torch.bool, device=device)

        k = int(keep.sum())
        coef = (scale[keep] / k).to(updates.dtype)                     # mean of clipped rows
        aggregate = coef @ x[keep]
        w = keep.to(updates.dtype) / k                                 # each kept row's share
        return Verdict(aggregate=aggregate, weights=w, flagged=~keep,
                       diagnostics={"clip_norm": tau})
