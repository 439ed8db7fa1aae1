"""Sign statistics (the SignGuard of Xu et al.): norm filter + clustering of sign features."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import row_norms
from byzbench.defenses.kmeans import kmeans_labels
from byzbench.defenses.mean_shift import mean_shift_labels
from byzbench.registry import DEFENSES


class SignStatisticsParams(DefenseParams):
    norm_low: float = Field(0.1, ge=0.0, le=1.0,
                            description="L: keep updates with ‖g‖/median norm > L")
    norm_high: float = Field(3.0, ge=1.0, le=1000.0,
                             description="R: keep updates with ‖g‖/median norm < R")
    coord_fraction: float = Field(
        0.1, gt=0.0, le=1.0,
        description="fraction of coordinates, drawn at random each round, whose signs are "
                    "counted")
    clusterer: Literal["meanshift", "kmeans"] = Field(
        "meanshift",
        description="MeanShift (the paper: scikit-learn's MeanShift labels, computed by a "
                    "vectorised reimplementation that the tests check equal to scikit-learn's) "
                    "or KMeans on the features (scikit-learn's KMeans labels, n_init=10, "
                    "likewise computed by a vectorised reimplementation checked equal to "
                    "scikit-learn's)")
    bandwidth_quantile: float = Field(
        0.5, gt=0.0, le=1.0, description="MeanShift bandwidth = estimate_bandwidth(quantile)")
    cluster_all: bool = Field(
        False,
        description="MeanShift cluster_all: false (the SignGuard code) leaves updates farther "
                    "than the bandwidth from every mode unclustered, hence flagged")
    n_clusters: int = Field(2, ge=2, le=100, description="KMeans clusters")
    clip: bool = Field(True, description="clip the kept updates to the median norm before "
                                         "averaging")

    @model_validator(mode="after")
    def _bounds(self) -> SignStatisticsParams:
        if self.norm_low >= self.norm_high:
            raise ValueError("norm_low must be below norm_high")
        return self


def sign_features(x: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """[m, 3] fractions of positive, zero and negative coordinates (on ``cols``), each column
    divided by its maximum over the clients (as in the SignGuard code)."""
    sub = x if cols is None else x[:, cols]
    k = sub.shape[1]
    s = torch.sign(sub)
    feats = torch.stack([(s > 0).sum(1), (s == 0).sum(1), (s < 0).sum(1)], dim=1)
    feats = feats.to(torch.float64) / max(k, 1)
    return feats / (feats.max(dim=0).values + 1e-8)


@DEFENSES.register("sign_statistics")
class SignStatistics(Defense):
    """Sign statistics — the SignGuard of Xu et al. (ICDCS 2022): keep updates whose norm is
    within (L, R) times the median norm and that fall in the largest MeanShift cluster of
    sign statistics (fractions of positive, zero, negative coordinates on a random subset);
    clip them to the median norm and average. Flags the rest. The MeanShift labels are
    scikit-learn's (bin seeding), computed by a vectorised reimplementation that the test
    suite checks equal to scikit-learn's."""

    Params: ClassVar[type[SignStatisticsParams]] = SignStatisticsParams
    paper: ClassVar[str] = ("Xu, Huang, Song & Lan, SignGuard: Byzantine-robust Federated "
                            "Learning through Collaborative Malicious Gradient Filtering, "
                            "ICDCS 2022")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="norms and coordinate signs of the plaintext updates")
    stateless: ClassVar[bool] = True

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        p: SignStatisticsParams = self.params
        x = updates
        m, d = x.shape
        device = x.device
        g = ctx.generator

        # 1. norm filter around the median norm
        norms = row_norms(x)
        med = float(torch.quantile(norms, 0.5))
        if med > 0:
            ratio = norms / med
            by_norm = (ratio > p.norm_low) & (ratio < p.norm_high)
        else:
            by_norm = torch.ones(m, dtype=torch.bool, device=device)

        # 2. clustering of sign statistics on a random coordinate subset
        k = max(1, int(p.coord_fraction * d))
        cols = None
        if k < d:
            cols = torch.randperm(d, generator=g, device=g.device)[:k].to(device)
        feats = sign_features(x, cols).cpu().numpy()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device))
        by_sign = torch.from_numpy(self._majority(feats, seed, p)).to(device)

        keep = by_norm & by_sign
        if not bool(keep.any()):
            return Verdict(aggregate=x.new_zeros(d), weights=x.new_zeros(m),
                           flagged=torch.ones(m, dtype=torch.bool, device=device))
        # 3. clip to the median norm and average
        scale = torch.ones_like(norms)
        if p.clip and med > 0:
            scale = (med / norms.clamp(min=1e-300)).clamp(max=1.0)
        k = int(keep.sum())
        aggregate = (scale[keep] / k).to(updates.dtype) @ x[keep]       # mean of clipped rows
        w = keep.to(updates.dtype) / k                                  # each kept row's share
        return Verdict(aggregate=aggregate, weights=w, flagged=~keep)

    @staticmethod
    def _majority(feats: np.ndarray, seed: int, p: SignStatisticsParams) -> np.ndarray:
        """[m] bool: members of the largest cluster of the sign features.

        MeanShift: the labels of scikit-learn's ``MeanShift(bandwidth, bin_seeding=True,
        cluster_all)``, computed by :func:`~byzbench.defenses.mean_shift.mean_shift_labels`
        (a vectorised reimplementation: under 1 ms instead of 9–15 ms a round,
        ``benchmarks/bench_defenses.py --meanshift``; tests/test_mean_shift.py checks the
        labels equal to scikit-learn's). Like scikit-learn it raises ``ValueError`` when no
        seed has a point within the bandwidth, which bin seeding cannot produce with 3
        features.

        KMeans: the labels of scikit-learn's ``KMeans(n_clusters=min(n_clusters, m),
        n_init=10, random_state=seed).fit_predict``, computed by
        :func:`~byzbench.defenses.kmeans.kmeans_labels` (the restarts vectorised,
        ``benchmarks/bench_defenses.py --kmeans``; tests/test_kmeans.py checks the labels
        equal to scikit-learn's)."""
        m = feats.shape[0]
        if m < 3 or np.ptp(feats, axis=0).max() <= 1e-12:
            return np.ones(m, dtype=bool)
        if p.clusterer == "kmeans":
            labels = kmeans_labels(feats, min(p.n_clusters, m), 10, seed)
        else:
            bandwidth = knn_bandwidth(feats, p.bandwidth_quantile)
            if not bandwidth > 0:
                return np.ones(m, dtype=bool)
            labels = mean_shift_labels(feats, bandwidth, p.cluster_all)
        valid = labels[labels >= 0]
        if valid.size == 0:
            return np.ones(m, dtype=bool)
        return labels == np.bincount(valid).argmax()


def knn_bandwidth(feats: np.ndarray, quantile: float) -> float:
    """scikit-learn's ``estimate_bandwidth(feats, quantile)`` (all rows, no subsampling):
    the mean over rows of the distance to the k-th nearest row, the row itself included,
    k = max(1, ⌊m·quantile⌋). One [m, m] distance matrix instead of a NearestNeighbors
    index (whose set-up dominates at m ≈ 20 rows)."""
    m = feats.shape[0]
    k = max(1, int(m * quantile))
    diff = feats[:, None, :] - feats[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return float(np.partition(dist, k - 1, axis=1)[:, k - 1].mean())
