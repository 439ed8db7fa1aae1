"""FLAME: HDBSCAN on cosine distances, clipping to the median norm, Gaussian noise."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from byzbench.defenses.base import Defense, DefenseParams, Privacy, RoundContext, Verdict
from byzbench.defenses.geometry import pairwise_cosine, pairwise_sq_distances, row_norms
from byzbench.defenses.sklearn_calls import lean_sklearn
from byzbench.registry import DEFENSES


class FlameParams(DefenseParams):
    cluster_on: Literal["models", "updates"] = Field(
        "models",
        description="cosine distances between the local models W_i = θ + Δ_i (the paper) or "
                    "between the updates Δ_i (many re-implementations)")
    selection_epsilon: float = Field(
        0.0, ge=0.0, le=2.0,
        description="HDBSCAN cluster_selection_epsilon: with one (majority) cluster, HDBSCAN "
                    "admits only the models still in it at the densest level (about "
                    "⌊n/2⌋+1 of them); ε > 0 admits every model within cosine distance ε "
                    "(0: the paper's setting)")
    clip_median: Literal["all", "admitted"] = Field(
        "all",
        description="S_t = median update norm over all finite updates (the paper's "
                    "Algorithm 1) or over the admitted ones only (common reference code)")
    noise_lambda: float = Field(
        0.001, ge=0.0, le=10.0,
        description="noise level λ: σ = λ·S_t with S_t the median update norm (the paper's "
                    "value for image classification; 0 turns the noise off)")
    epsilon: float | None = Field(
        None, gt=0.0,
        description="if set, λ = √(2 ln(1.25/δ))/ε (Gaussian mechanism) instead of noise_lambda")
    delta: float = Field(0.001, gt=0.0, lt=1.0, description="δ of the (ε, δ) calibration")

    @model_validator(mode="after")
    def _one_noise_knob(self) -> FlameParams:
        if self.epsilon is not None and "noise_lambda" in self.model_fields_set:
            raise ValueError("give noise_lambda or epsilon (with delta), not both")
        return self

    @property
    def lam(self) -> float:
        if self.epsilon is None:
            return self.noise_lambda
        return math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.epsilon


def model_cosine_distances(updates: torch.Tensor, global_params: torch.Tensor) -> torch.Tensor:
    """[m, m] float64 cosine distances 1 − cos(W_i, W_j) of the models W_i = θ + Δ_i.

    Local models share the large component θ, so their cosines are all close to 1 and
    forming W_i in float32 would drown the differences. For pairs of comparable norm the
    distance is computed as (‖W_i − W_j‖² − (‖W_i‖ − ‖W_j‖)²) / (2‖W_i‖‖W_j‖) from
    ‖W_i − W_j‖ = ‖Δ_i − Δ_j‖ and ‖W_i‖ = ‖Δ_i − (−θ)‖ (one centred Gram matrix, no
    cancellation against θ); for pairs whose norms differ by more than half (e.g. a scaled
    attack row) that formula cancels instead, and the plain cosine of the models is used.
    """
    m = updates.shape[0]
    theta = global_params.to(device=updates.device, dtype=updates.dtype).reshape(-1)
    sq = pairwise_sq_distances(torch.cat([updates, -theta[None, :]], dim=0))
    a2 = sq[:m, m]                                   # ‖W_i‖²
    a = a2.sqrt()
    hi = torch.maximum(a[:, None], a[None, :])
    lo = torch.minimum(a[:, None], a[None, :])
    gap = (a2[:, None] - a2[None, :]) / torch.where(hi > 0, hi + lo, torch.ones_like(hi))
    prod = 2.0 * hi * lo
    dist = (sq[:m, :m] - gap * gap) / torch.where(prod > 0, prod, torch.ones_like(prod))
    plain = ~(hi < 1.5 * lo)                         # very different norms, or a zero model
    if bool(plain.any()):
        direct = 1.0 - pairwise_cosine(updates + theta[None, :])
        dist = torch.where(plain, direct, dist)
    dist = (0.5 * (dist + dist.T)).clamp(0.0, 2.0)
    dist.fill_diagonal_(0.0)
    return dist


@DEFENSES.register("flame")
class Flame(Defense):
    """FLAME (Nguyen et al., USENIX Security 2022): HDBSCAN (min_cluster_size = ⌊n/2⌋+1) on
    pairwise cosine distances of the local models admits the majority cluster; admitted
    updates are clipped to the median update norm S_t, averaged, and Gaussian noise of
    σ = λ·S_t is added. Flags the models outside the cluster."""

    Params: ClassVar[type[FlameParams]] = FlameParams
    paper: ClassVar[str] = ("Nguyen et al., FLAME: Taming Backdoors in Federated Learning, "
                            "USENIX Security 2022")
    stateless: ClassVar[bool] = True
    lazy_imports: ClassVar[tuple[str, ...]] = ("sklearn.cluster",)
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="pairwise cosine between plaintext models (the paper runs this "
        "in secure two-party computation; here in the clear); adds Gaussian noise to the "
        "aggregate")

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        from sklearn.cluster import HDBSCAN  # ~0.5 s: see lazy_imports

        p: FlameParams = self.params
        x = updates
        m, d = x.shape
        device = x.device
        admitted = torch.ones(m, dtype=torch.bool, device=device)
        if m >= 3:
            if p.cluster_on == "models":
                dist = model_cosine_distances(x, ctx.global_params)
            else:
                cos = pairwise_cosine(x)
                dist = (1.0 - 0.5 * (cos + cos.T)).clamp(0.0, 2.0)
                dist.fill_diagonal_(0.0)
            with lean_sklearn():
                labels = HDBSCAN(min_cluster_size=m // 2 + 1, min_samples=1,
                                 metric="precomputed", allow_single_cluster=True,
                                 cluster_selection_epsilon=p.selection_epsilon,
                                 copy=True).fit_predict(dist.cpu().numpy())
            clustered = labels[labels >= 0]
            if clustered.size > 0:  # else (all noise): admit everyone, as the reference code
                best = np.bincount(clustered).argmax()
                admitted = torch.from_numpy(labels == best).to(device)

        norms = row_norms(x)                                          # e_i = ‖W_i − θ‖
        s_t = float(torch.quantile(norms if p.clip_median == "all" else norms[admitted], 0.5))
        scale = (s_t / norms.clamp(min=1e-300)).clamp(max=1.0)
        k = int(admitted.sum())
        aggregate = (scale[admitted] / k).to(updates.dtype) @ x[admitted]  # mean of clipped
        w = admitted.to(updates.dtype) / k                                # each one's share
        sigma = p.lam * s_t
        if sigma > 0:
            g = ctx.generator
            noise = torch.randn(d, generator=g, device=g.device, dtype=updates.dtype)
            aggregate = aggregate + sigma * noise.to(device)
        return Verdict(aggregate=aggregate, weights=w, flagged=~admitted,
                       diagnostics={"clip_norm": s_t, "admitted": int(k)})
