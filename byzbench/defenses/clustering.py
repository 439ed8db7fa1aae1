"""KMeans clustering of the updates, keeping the largest cluster.

The updates are first mapped to exact low-dimensional coordinates: for ``n`` rows in
``d ≫ n`` dimensions, the R factor of the QR decomposition of the (centred) rows, transposed,
gives ``n``-dimensional points with the very same pairwise distances and inner products
(``Xᵀ = QR`` ⇒ ``X Xᵀ = Rᵀ R``). KMeans depends on the points only through distances and
means, so KMeans on those coordinates gives the clustering it would give on the raw
``[n, d]`` matrix, at a cost independent of ``d`` after one QR. Householder QR is
column-wise backward stable, so an attacker's 1e30 row does not erase the honest rows'
geometry (as an eigen-decomposition of the Gram matrix would).

The labels are scikit-learn's ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)
.fit(coords).labels_``, computed by :func:`~byzbench.defenses.kmeans.kmeans_labels` (its
restarts vectorised: ~0.5 ms instead of ~3 ms a round at n = 20,
``benchmarks/bench_defenses.py --kmeans``; tests/test_kmeans.py checks the labels, the
inertia and the centres equal to scikit-learn's).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import mean_of, pairwise_sq_distances, row_norms, row_scale
from byzbench.defenses.kmeans import kmeans_labels
from byzbench.registry import DEFENSES


def exact_coordinates(x: torch.Tensor, metric: str = "euclidean") -> np.ndarray:
    """[n, min(n, d)] float64 points with the pairwise geometry of the finite rows ``x``.

    ``euclidean``: rows centred on their median-norm row; ``cosine``: rows scaled to unit
    norm (zero rows stay zero), so Euclidean KMeans on them clusters by cosine similarity.
    """
    norms = row_norms(x)
    if metric == "cosine":
        if bool((norms > torch.finfo(x.dtype).max / 4).any()):
            x = x / row_scale(x)[:, None]  # bring huge rows into range first
            norms = row_norms(x)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        x = x / safe.to(x.dtype)[:, None]
    else:
        order = torch.argsort(norms, stable=True)
        x = x - x[order[(x.shape[0] - 1) // 2]]
    if not bool(torch.isfinite(torch.linalg.vector_norm(x, dim=1)).all()):
        x = x.to(torch.float64)  # norms beyond the input dtype's range
    r = torch.linalg.qr(x.T, mode="r").R  # [min(d, n), n]
    return r.T.to(torch.float64).cpu().numpy()


class ClusteringParams(DefenseParams):
    n_clusters: int = Field(2, ge=2, le=64, description="k of KMeans")
    metric: Literal["euclidean", "cosine"] = Field(
        "euclidean", description="geometry clustered: raw updates or unit-normalised ones")
    n_init: int = Field(10, ge=1, le=100, description="KMeans restarts (best inertia kept)")


@DEFENSES.register("clustering")
class Clustering(Defense):
    """KMeans clustering defense (in the spirit of Shen et al., Auror, ACSAC 2016 and
    Sattler et al., 2020): cluster the updates with KMeans (k = n_clusters, euclidean or
    cosine; scikit-learn's labels, computed by a vectorised reimplementation that the tests
    check equal to scikit-learn's), average the largest cluster and flag every other
    client."""

    Params: ClassVar[type[ClusteringParams]] = ClusteringParams
    paper: ClassVar[str] = ("Shen, Tople, Saxena, Auror: Defending against Poisoning Attacks "
                            "in Collaborative Deep Learning Systems, ACSAC 2016")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="needs every plaintext update (clusters them)")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        x = updates
        n_ok = x.shape[0]
        k = min(self.params.n_clusters, n_ok)
        if k <= 1:
            keep = torch.ones(n_ok, dtype=torch.bool, device=updates.device)
            labels = np.zeros(n_ok, dtype=np.int64)
        else:
            coords = exact_coordinates(x, self.params.metric)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator,
                                     device=ctx.generator.device).item())
            # scikit-learn's KMeans(k, n_init, random_state=seed).fit(coords).labels_;
            # identical updates (fewer distinct rows than k) are fine, without its warning
            labels = kmeans_labels(coords, k, self.params.n_init, seed)
            keep_label = self._largest(labels, x)
            keep = torch.as_tensor(labels == keep_label, device=updates.device)
        w_in = ctx.weights.to(updates.device, updates.dtype)
        w_out = torch.where(keep, w_in, torch.zeros_like(w_in))
        if not bool(w_out.sum() > 0):
            w_out = keep.to(updates.dtype)
        w_out = w_out / w_out.sum()
        return Verdict(aggregate=mean_of(updates, w_out), weights=w_out, flagged=~keep,
                       diagnostics={"cluster": torch.from_numpy(labels).to(torch.float64)})

    @staticmethod
    def _largest(labels: np.ndarray, x: torch.Tensor) -> int:
        """The most populous label; among equally large clusters, the one holding the
        medoid (the row with the least total squared distance to all rows)."""
        counts = np.bincount(labels)
        biggest = np.flatnonzero(counts == counts.max())
        if biggest.size == 1:
            return int(biggest[0])
        medoid = int(torch.argmin(pairwise_sq_distances(x).sum(dim=1)))
        if labels[medoid] in biggest:
            return int(labels[medoid])
        return int(biggest[0])
